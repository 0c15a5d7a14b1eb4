//! RFC 8291 message encryption (aes128gcm content coding, RFC 8188) on ring.
//!
//! One record of at most 4096 bytes: a fresh ephemeral P-256 key and a fresh
//! salt per message, so no two messages share a content key.

use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{self, ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey};
use ring::hkdf::{HKDF_SHA256, KeyType, Salt};
use ring::rand::{SecureRandom, SystemRandom};

pub use pushq_schemas::payload::MAX_PLAINTEXT_BYTES;

/// The record size we announce: the whole message is one record.
pub const RECORD_SIZE: u32 = 4096;
const SALT_LEN: usize = 16;
const PUBLIC_KEY_LEN: usize = 65;
const TAG_LEN: usize = 16;
/// salt ‖ rs (u32) ‖ idlen (u8) ‖ keyid (the sender's public key).
const HEADER_LEN: usize = SALT_LEN + 4 + 1 + PUBLIC_KEY_LEN;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncryptError {
    #[error("the plaintext is {0} bytes; one push record holds at most {MAX_PLAINTEXT_BYTES}")]
    TooLarge(usize),
    #[error("the subscription's p256dh key is not a valid P-256 point")]
    BadPublicKey,
    #[error("the system random generator failed")]
    Random,
}

/// The subscription's keys as the browser created them.
#[derive(Clone, Copy)]
#[allow(missing_debug_implementations)] // key material: never printed
pub struct UserAgentKeys<'a> {
    pub p256dh: &'a [u8; PUBLIC_KEY_LEN],
    pub auth: &'a [u8; 16],
}

/// The sender's side of one message: its public key and the ECDH secret shared
/// with the browser. Split out so that the RFC's fixed-key example can be
/// reproduced; production always uses [`encrypt`].
#[allow(missing_debug_implementations)] // key material: never printed
pub struct SenderSecret {
    pub public_key: [u8; PUBLIC_KEY_LEN],
    pub shared_secret: Vec<u8>,
}

/// Encrypts `plaintext` for a browser with a fresh ephemeral key and salt.
pub fn encrypt(
    rng: &SystemRandom,
    keys: UserAgentKeys<'_>,
    plaintext: &[u8],
) -> Result<Vec<u8>, EncryptError> {
    if plaintext.len() > MAX_PLAINTEXT_BYTES {
        return Err(EncryptError::TooLarge(plaintext.len()));
    }
    let ephemeral =
        EphemeralPrivateKey::generate(&ECDH_P256, rng).map_err(|_| EncryptError::Random)?;
    let public = ephemeral
        .compute_public_key()
        .map_err(|_| EncryptError::Random)?;
    let mut public_key = [0u8; PUBLIC_KEY_LEN];
    public_key.copy_from_slice(public.as_ref());
    let shared_secret = agreement::agree_ephemeral(
        ephemeral,
        &UnparsedPublicKey::new(&ECDH_P256, keys.p256dh),
        |secret| secret.to_vec(),
    )
    .map_err(|_| EncryptError::BadPublicKey)?;
    let mut salt = [0u8; SALT_LEN];
    rng.fill(&mut salt).map_err(|_| EncryptError::Random)?;
    encrypt_with(
        &SenderSecret {
            public_key,
            shared_secret,
        },
        &salt,
        keys,
        plaintext,
    )
}

/// RFC 8291 §3.4 key derivation and RFC 8188 framing for given sender keys and salt.
pub fn encrypt_with(
    sender: &SenderSecret,
    salt: &[u8; SALT_LEN],
    keys: UserAgentKeys<'_>,
    plaintext: &[u8],
) -> Result<Vec<u8>, EncryptError> {
    if plaintext.len() > MAX_PLAINTEXT_BYTES {
        return Err(EncryptError::TooLarge(plaintext.len()));
    }
    // IKM = HKDF(auth_secret, ecdh_secret, "WebPush: info" ‖ 0 ‖ ua_public ‖ as_public, 32)
    let mut key_info = Vec::with_capacity(14 + 2 * PUBLIC_KEY_LEN);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(keys.p256dh);
    key_info.extend_from_slice(&sender.public_key);
    let ikm: [u8; 32] = hkdf_expand(keys.auth, &sender.shared_secret, &key_info);

    let content_key: [u8; 16] = hkdf_expand(salt, &ikm, b"Content-Encoding: aes128gcm\0");
    let nonce: [u8; 12] = hkdf_expand(salt, &ikm, b"Content-Encoding: nonce\0");

    let mut body = Vec::with_capacity(HEADER_LEN + plaintext.len() + 1 + TAG_LEN);
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(PUBLIC_KEY_LEN as u8);
    body.extend_from_slice(&sender.public_key);
    let mut record = Vec::with_capacity(plaintext.len() + 1 + TAG_LEN);
    record.extend_from_slice(plaintext);
    // 0x02: the last (and only) record, with no padding after it.
    record.push(2);
    let key = LessSafeKey::new(
        UnboundKey::new(&AES_128_GCM, &content_key).map_err(|_| EncryptError::Random)?,
    );
    // Record sequence number 0: the nonce is used as derived.
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::empty(),
        &mut record,
    )
    .map_err(|_| EncryptError::Random)?;
    body.extend_from_slice(&record);
    Ok(body)
}

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf_expand<const N: usize>(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; N] {
    let prk = Salt::new(HKDF_SHA256, salt).extract(ikm);
    let mut out = [0u8; N];
    // N ≤ 32 is far below HKDF-SHA256's 255 × 32 byte limit, so expand cannot fail.
    if let Ok(okm) = prk.expand(&[info], Len(N)) {
        let _ = okm.fill(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use pushq_schemas::keys::BASE64URL_LENIENT;

    fn b64(value: &serde_json::Value) -> Vec<u8> {
        BASE64URL_LENIENT
            .decode(value.as_str().expect("string"))
            .expect("base64url")
    }

    /// RFC 8291 Appendix A, byte for byte: the sender's fixed key is applied
    /// with RustCrypto's ECDH (ring cannot import an ECDH private key), and
    /// everything after the shared secret is the production path.
    #[test]
    fn reproduces_rfc8291_appendix_a() {
        let vector: serde_json::Value =
            serde_json::from_str(include_str!("../../testdata/rfc8291-appendix-a.json"))
                .expect("vector json");
        let as_private = p256::SecretKey::from_slice(&b64(&vector["as_private"])).expect("key");
        let ua_public_bytes: [u8; 65] = b64(&vector["ua_public"]).try_into().expect("65 bytes");
        let ua_public = p256::PublicKey::from_sec1_bytes(&ua_public_bytes).expect("point");
        let shared =
            p256::ecdh::diffie_hellman(as_private.to_nonzero_scalar(), ua_public.as_affine());
        let as_public: [u8; 65] = as_private
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .try_into()
            .expect("65 bytes");
        assert_eq!(as_public.to_vec(), b64(&vector["as_public"]));
        let auth: [u8; 16] = b64(&vector["auth_secret"]).try_into().expect("16 bytes");
        let salt: [u8; 16] = b64(&vector["salt"]).try_into().expect("16 bytes");

        let body = encrypt_with(
            &SenderSecret {
                public_key: as_public,
                shared_secret: shared.raw_secret_bytes().to_vec(),
            },
            &salt,
            UserAgentKeys {
                p256dh: &ua_public_bytes,
                auth: &auth,
            },
            vector["plaintext_utf8"].as_str().expect("text").as_bytes(),
        )
        .expect("encrypts");
        assert_eq!(body, b64(&vector["body"]));
    }

    #[test]
    fn refuses_what_does_not_fit_one_record() {
        let rng = SystemRandom::new();
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let point: [u8; 65] = secret
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .try_into()
            .expect("65 bytes");
        let keys = UserAgentKeys {
            p256dh: &point,
            auth: &[7; 16],
        };
        let largest = encrypt(&rng, keys, &[b'x'; MAX_PLAINTEXT_BYTES]).expect("fits");
        assert_eq!(largest.len(), RECORD_SIZE as usize);
        assert_eq!(
            encrypt(&rng, keys, &[b'x'; MAX_PLAINTEXT_BYTES + 1]),
            Err(EncryptError::TooLarge(MAX_PLAINTEXT_BYTES + 1))
        );
    }
}
