//! Object storage by URL, shared by the coordinator (state snapshots) and the extension (checkpoints):
//! `file:///abs/path`, `s3://bucket/key`, `gs://bucket/key`, `az://container/key`.
//!
//! Credentials and endpoints come from the environment each cloud's tools use (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`; `GOOGLE_SERVICE_ACCOUNT`…;
//! `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`…), never from the URL, so a URL can be logged and
//! stored without leaking a secret.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;

/// Why a URL does not name a usable object store location.
#[derive(Debug, thiserror::Error)]
pub enum ObjectUrlError {
    /// The URL is malformed or names no object.
    #[error("invalid object URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    /// The store could not be configured (missing credentials, bad settings).
    #[error("{url}: {source}")]
    Store { url: String, source: object_store::Error },
}

/// The store and the object path a URL names. `file://` paths must be absolute; for the cloud schemes the host is
/// the bucket (container) and the path the key, which must not be empty unless `allow_empty_key` (a prefix to list).
pub fn store_for(url: &str, allow_empty_key: bool) -> Result<(Arc<dyn ObjectStore>, ObjectPath), ObjectUrlError> {
    let bad = |reason: &str| ObjectUrlError::Url { url: url.into(), reason: reason.into() };
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if parsed.scheme() == "file" {
        let path = parsed.to_file_path().map_err(|_| bad("not an absolute file path"))?;
        let location = ObjectPath::from_absolute_path(&path).map_err(|e| bad(&e.to_string()))?;
        return Ok((Arc::new(LocalFileSystem::new()), location));
    }
    let bucket = parsed.host_str().filter(|h| !h.is_empty()).ok_or_else(|| bad("no bucket"))?;
    let key = parsed.path().trim_start_matches('/').trim_end_matches('/');
    if key.is_empty() && !allow_empty_key {
        return Err(bad("no object key after the bucket"));
    }
    let store_error = |source| ObjectUrlError::Store { url: url.into(), source };
    let store: Arc<dyn ObjectStore> = match parsed.scheme() {
        "s3" => Arc::new(
            AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_virtual_hosted_style_request(false)
                .build()
                .map_err(store_error)?,
        ),
        "gs" => Arc::new(GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket).build().map_err(store_error)?),
        "az" => Arc::new(MicrosoftAzureBuilder::from_env().with_container_name(bucket).build().map_err(store_error)?),
        other => return Err(bad(&format!("scheme {other:?} is not supported (use file://, s3://, gs:// or az://)"))),
    };
    Ok((store, ObjectPath::from(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_store_and_a_key_or_say_why_not() {
        assert_eq!(store_for("file:///tmp/a/b.snap", false).unwrap().1.as_ref(), "tmp/a/b.snap");
        assert!(store_for("file://relative", false).is_err());
        assert!(store_for("s3://bucket", false).unwrap_err().to_string().contains("no object key"));
        assert_eq!(store_for("s3://bucket/", true).unwrap().1.as_ref(), "");
        assert!(store_for("ftp://x/y", false).unwrap_err().to_string().contains("not supported"));
        assert!(store_for("not a url", false).is_err());
    }
}
