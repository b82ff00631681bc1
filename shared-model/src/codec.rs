//! The versioned binary form used for everything stored or replicated (log entries, applied records, snapshots).
//!
//! Layout: `b"PGTF"` magic, format version (u16 LE), payload length (u32 LE), xxh3-64 of the payload (u64 LE),
//! then the payload in bincode 2 (standard config, serde). The header lets the codec change later and lets a
//! reader tell a damaged or foreign value from a valid one before decoding it.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Magic bytes at the start of every encoded value.
pub const MAGIC: [u8; 4] = *b"PGTF";
/// The current format version.
/// Version 2: registrations carry the server's system identifier and producer epoch, advances their fence.
/// Version 3: streams carry their incarnation, the state the federation's message key; envelopes carry
/// incarnation and producer epoch and are followed by an authentication tag.
pub const FORMAT_VERSION: u16 = 3;
/// Size of the header in bytes.
pub const HEADER_LEN: usize = 4 + 2 + 4 + 8;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Fewer bytes than a header.
    #[error("truncated: {len} bytes, a header alone is {HEADER_LEN}")]
    TooShort { len: usize },
    /// The magic bytes are wrong: not something this codec wrote.
    #[error("not a pg_trickle federation record (magic {found:02x?})")]
    BadMagic { found: [u8; 4] },
    /// Written by a newer (or unknown) format.
    #[error("format version {found} is not supported (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion { found: u16 },
    /// The payload is shorter or longer than the header says.
    #[error("payload is {found} bytes, the header says {expected}: truncated or garbled")]
    LengthMismatch { expected: usize, found: usize },
    /// The payload fails its checksum.
    #[error("payload checksum mismatch (stored {stored:016x}, computed {computed:016x}): garbled")]
    ChecksumMismatch { stored: u64, computed: u64 },
    /// The payload does not decode as the expected type.
    #[error("payload does not decode: {0}")]
    Decode(String),
}

/// Encodes a value with the header.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    encode_framed(MAGIC, value)
}

/// Checks the header and checksum, then decodes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_framed(MAGIC, bytes)
}

/// Encodes with another magic: other record families (broker envelopes) share the layout but must never be
/// mistaken for each other.
pub fn encode_framed<T: Serialize>(magic: [u8; 4], value: &T) -> Vec<u8> {
    let payload = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("model types contain no unserializable values");
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&magic);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Decodes bytes written by [`encode_framed`] with the same magic.
pub fn decode_framed<T: DeserializeOwned>(expected_magic: [u8; 4], bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::TooShort { len: bytes.len() });
    }
    let magic: [u8; 4] = bytes[0..4].try_into().expect("4 bytes");
    if magic != expected_magic {
        return Err(CodecError::BadMagic { found: magic });
    }
    let version = u16::from_le_bytes(bytes[4..6].try_into().expect("2 bytes"));
    if version != FORMAT_VERSION {
        return Err(CodecError::UnsupportedVersion { found: version });
    }
    let expected = u32::from_le_bytes(bytes[6..10].try_into().expect("4 bytes")) as usize;
    let payload = &bytes[HEADER_LEN..];
    if payload.len() != expected {
        return Err(CodecError::LengthMismatch { expected, found: payload.len() });
    }
    let stored = u64::from_le_bytes(bytes[10..18].try_into().expect("8 bytes"));
    let computed = xxhash_rust::xxh3::xxh3_64(payload);
    if stored != computed {
        return Err(CodecError::ChecksumMismatch { stored, computed });
    }
    let (value, used) = bincode::serde::decode_from_slice(payload, bincode::config::standard())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(CodecError::Decode(format!("{} trailing bytes", payload.len() - used)));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_damage_is_named() {
        let bytes = encode(&("hello".to_string(), 42u64));
        assert_eq!(decode::<(String, u64)>(&bytes).unwrap(), ("hello".to_string(), 42));
        assert!(matches!(decode::<(String, u64)>(&bytes[..10]), Err(CodecError::TooShort { .. })));
        assert!(matches!(decode::<(String, u64)>(&bytes[..bytes.len() - 1]), Err(CodecError::LengthMismatch { .. })));
        let mut garbled = bytes.clone();
        *garbled.last_mut().unwrap() ^= 0xff;
        assert!(matches!(decode::<(String, u64)>(&garbled), Err(CodecError::ChecksumMismatch { .. })));
        let mut foreign = bytes.clone();
        foreign[0] = b'X';
        assert!(matches!(decode::<(String, u64)>(&foreign), Err(CodecError::BadMagic { .. })));
        let mut newer = bytes;
        newer[4] = 9;
        assert!(matches!(decode::<(String, u64)>(&newer), Err(CodecError::UnsupportedVersion { found: 9 })));
    }
}
