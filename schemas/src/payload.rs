//! The bytes a browser receives for a `payload` value.

use serde_json::Value;

/// RFC 8291: one 4096-byte record holds 4096 − 16 (tag) − 1 (delimiter) − 86
/// (header: salt, record size, key id) = 3993 bytes of plaintext.
pub const MAX_PLAINTEXT_BYTES: usize = 3993;

/// A JSON string is sent as its UTF-8 bytes, so a service can push plain text;
/// any other value as compact JSON. No payload means an empty push.
pub fn payload_bytes(payload: Option<&Value>) -> Vec<u8> {
    match payload {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => text.as_bytes().to_vec(),
        Some(other) => serde_json::to_vec(other).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_are_raw_text_and_the_rest_compact_json() {
        assert_eq!(payload_bytes(Some(&json!("héllo"))), "héllo".as_bytes());
        assert_eq!(
            payload_bytes(Some(&json!({"title": "a", "n": [1, 2]}))),
            br#"{"title":"a","n":[1,2]}"#
        );
        assert!(payload_bytes(None).is_empty());
        assert!(payload_bytes(Some(&Value::Null)).is_empty());
    }
}
