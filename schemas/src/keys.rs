//! Subscription keys as browsers give them: base64url, with or without padding.

use base64::Engine;
use base64::alphabet::URL_SAFE;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Browsers send unpadded base64url; some server libraries pad. Both decode,
/// and non-canonical trailing bits are refused (as the JSON Schema patterns do).
pub const BASE64URL_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Encodes as browsers and JWTs do: base64url without padding.
pub fn base64url(bytes: &[u8]) -> String {
    BASE64URL_LENIENT.encode(bytes)
}

pub const P256DH_LEN: usize = 65;
pub const AUTH_LEN: usize = 16;

/// Decodes `p256dh`: an uncompressed P-256 point that must lie on the curve,
/// since encrypting to a point off the curve leaks key material (invalid-curve
/// attacks) and no browser would be able to decrypt anyway.
pub fn decode_p256dh(text: &str) -> Result<[u8; P256DH_LEN], String> {
    let bytes = BASE64URL_LENIENT
        .decode(text)
        .map_err(|_| "keys.p256dh is not base64url".to_owned())?;
    let point: [u8; P256DH_LEN] = bytes.try_into().map_err(|bytes: Vec<u8>| {
        format!(
            "keys.p256dh must decode to {P256DH_LEN} bytes (an uncompressed P-256 point), not {}",
            bytes.len()
        )
    })?;
    if point[0] != 0x04 {
        return Err("keys.p256dh must be an uncompressed P-256 point (first byte 0x04)".to_owned());
    }
    p256::PublicKey::from_sec1_bytes(&point)
        .map_err(|_| "keys.p256dh is not a point on the P-256 curve".to_owned())?;
    Ok(point)
}

pub fn decode_auth(text: &str) -> Result<[u8; AUTH_LEN], String> {
    let bytes = BASE64URL_LENIENT
        .decode(text)
        .map_err(|_| "keys.auth is not base64url".to_owned())?;
    bytes.try_into().map_err(|bytes: Vec<u8>| {
        format!(
            "keys.auth must decode to {AUTH_LEN} bytes, not {}",
            bytes.len()
        )
    })
}
