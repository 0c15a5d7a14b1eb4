//! The VAPID public key the page subscribes with, checked at start: a wrong
//! one (often the private key, pasted from the wrong line) makes every
//! browser's subscription fail or be rejected by its push service.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Checks `value` is base64url of a 65-byte uncompressed P-256 point on the
/// curve; the error is one sentence for the operator, never the value.
pub fn check_public_key(value: &str) -> Result<(), String> {
    let hint = "give the public key `pushq-worker vapid public` prints";
    let bytes = URL_SAFE_NO_PAD
        .decode(value.trim().trim_end_matches('='))
        .map_err(|_| format!("PUSHQ_VAPID_PUBLIC_KEY is not base64url: {hint}"))?;
    if bytes.len() == 32 {
        return Err(format!(
            "PUSHQ_VAPID_PUBLIC_KEY holds 32 bytes: this looks like the private key; {hint}"
        ));
    }
    if bytes.len() != 65 || bytes[0] != 0x04 {
        return Err(format!(
            "PUSHQ_VAPID_PUBLIC_KEY holds {} bytes, not a 65-byte uncompressed P-256 public key: {hint}",
            bytes.len()
        ));
    }
    p256::PublicKey::from_sec1_bytes(&bytes)
        .map(drop)
        .map_err(|_| format!("PUSHQ_VAPID_PUBLIC_KEY is not a point on the P-256 curve: {hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real point: RFC 8291 Appendix A's browser key.
    const PUBLIC: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";

    #[test]
    fn only_a_public_point_passes() {
        assert_eq!(check_public_key(PUBLIC), Ok(()));
        let private = check_public_key(PRIVATE).expect_err("the private key");
        assert!(
            private.contains("this looks like the private key"),
            "{private}"
        );
        assert!(!private.contains(PRIVATE), "the key is never repeated");
        let off_curve = format!("{}A{}", &PUBLIC[..40], &PUBLIC[41..]);
        assert!(check_public_key(&off_curve).is_err());
        assert!(check_public_key("not base64!").is_err());
        assert!(check_public_key("").is_err());
    }
}
