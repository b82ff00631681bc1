//! The federation's message key: authenticates every broker envelope (HMAC-SHA256), so that a consumer applies
//! only batches written by a registered cluster of its own federation.
//!
//! The coordinators issue one random key per federation (it is in the replicated log, so every coordinator and a
//! restored snapshot hold the same one) and hand it to each cluster at registration, over the channel the write
//! token already authenticates. Anyone who can write to a topic but never registered — another federation sharing
//! the broker, a misdirected producer, a forger — cannot make a message a consumer accepts.
//!
//! The key travels in binary forms only (the log, snapshots, Raft RPC: bincode, not human-readable). In a
//! human-readable form (the JSON of the watch API, of a `StateRestored` event) it is written as `"<redacted>"`,
//! which reads back as a key that verifies nothing; `Debug` redacts it too. The registration reply carries it as
//! explicit hex ([`MessageKey::to_hex`]).

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Sha256;

/// Bytes of a key and of a message's tag.
pub const KEY_LEN: usize = 32;
/// Bytes of the authentication tag after each envelope.
pub const TAG_LEN: usize = 32;

/// Written in place of the key in human-readable forms.
pub const REDACTED: &str = "<redacted>";

/// A federation's message key (32 random bytes; written as 64 hex digits).
#[derive(Clone, PartialEq, Eq)]
pub struct MessageKey {
    bytes: [u8; KEY_LEN],
    /// False for a key read back from a redacted form: it verifies nothing.
    known: bool,
}

/// Why text is not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a message key is {expected} hex digits; got {found} characters{detail}")]
pub struct KeyParseError {
    expected: usize,
    found: usize,
    detail: &'static str,
}

impl MessageKey {
    /// A key from its bytes (the coordinator draws them from the operating system's random source).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        MessageKey { bytes, known: true }
    }

    /// Whether this is a real key (not one read back from a redacted form).
    pub fn is_known(&self) -> bool {
        self.known
    }

    /// Parses the 64-hex-digit form.
    pub fn parse_hex(text: &str) -> Result<Self, KeyParseError> {
        let text = text.trim();
        let error = |detail| KeyParseError { expected: KEY_LEN * 2, found: text.len(), detail };
        if text.len() != KEY_LEN * 2 {
            return Err(error(""));
        }
        let mut bytes = [0u8; KEY_LEN];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| error(" (not hexadecimal)"))?;
        }
        Ok(MessageKey::from_bytes(bytes))
    }

    /// The 64-hex-digit form (for the registration reply and the extension's catalog only).
    pub fn to_hex(&self) -> String {
        self.bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.bytes).expect("HMAC takes a key of any length")
    }

    /// The tag of `message`.
    pub fn tag(&self, message: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac();
        mac.update(message);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` authenticates `message` (compared in constant time).
    pub fn verify(&self, message: &[u8], tag: &[u8]) -> bool {
        if !self.known {
            return false;
        }
        let mut mac = self.mac();
        mac.update(message);
        mac.verify_slice(tag).is_ok()
    }
}

impl fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MessageKey(<redacted>)")
    }
}

impl Serialize for MessageKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(REDACTED)
        } else {
            self.bytes.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for MessageKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            if text == REDACTED {
                return Ok(MessageKey { bytes: [0; KEY_LEN], known: false });
            }
            return MessageKey::parse_hex(&text).map_err(serde::de::Error::custom);
        }
        Ok(MessageKey::from_bytes(<[u8; KEY_LEN]>::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let key = MessageKey::from_bytes([0xab; KEY_LEN]);
        assert!(!format!("{key:?}").contains("ab"));
        assert_eq!(MessageKey::parse_hex(&key.to_hex()).unwrap(), key);
        assert!(MessageKey::parse_hex("abc").is_err());
        assert!(MessageKey::parse_hex(&"zz".repeat(KEY_LEN)).is_err());
    }

    #[test]
    fn human_readable_forms_redact_the_key_and_binary_forms_keep_it() {
        let key = MessageKey::from_bytes([7; KEY_LEN]);
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"{REDACTED}\""));
        let back: MessageKey = serde_json::from_str(&json).unwrap();
        assert!(!back.is_known());
        assert!(!back.verify(b"m", &key.tag(b"m")));
        let binary = crate::codec::encode(&key);
        assert_eq!(crate::codec::decode::<MessageKey>(&binary).unwrap(), key);
    }

    proptest! {
        #[test]
        fn only_the_same_key_and_bytes_verify(
            key in any::<[u8; KEY_LEN]>(),
            other in any::<[u8; KEY_LEN]>(),
            message in proptest::collection::vec(any::<u8>(), 0..200),
            flip in any::<usize>(),
        ) {
            let key = MessageKey::from_bytes(key);
            let tag = key.tag(&message);
            prop_assert!(key.verify(&message, &tag));
            if other != key.bytes {
                prop_assert!(!MessageKey::from_bytes(other).verify(&message, &tag));
            }
            if !message.is_empty() {
                let mut changed = message.clone();
                changed[flip % message.len()] ^= 1;
                prop_assert!(!key.verify(&changed, &tag));
            }
            prop_assert!(!key.verify(&message, &tag[..TAG_LEN - 1]));
        }
    }
}
