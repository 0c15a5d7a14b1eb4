//! RFC 8292 VAPID: an ES256 JWT per push-service origin, signed once and reused
//! until it nears expiry, because signing costs more than encrypting.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hashlink::LruCache;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use pushq_schemas::keys::{BASE64URL_LENIENT, base64url};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

mod pem;

/// RFC 8292 allows at most 24 h; 12 h leaves room for clock skew at the push service.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// A cached token is replaced once less than this is left of it.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(3600);

/// The application server's private key. Debug and Display never show it.
#[derive(Clone)]
pub struct VapidPrivateKey(p256::SecretKey);

impl fmt::Debug for VapidPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VapidPrivateKey(<redacted>)")
    }
}

impl VapidPrivateKey {
    pub fn generate() -> Self {
        Self(p256::SecretKey::random(&mut rand_core::OsRng))
    }

    /// The raw 32-byte scalar in base64url, as `web-push generate-vapid-keys` prints it.
    /// The error never repeats the input.
    pub fn from_base64url(text: &str) -> Result<Self, String> {
        let bytes = BASE64URL_LENIENT
            .decode(text.trim())
            .map_err(|_| "is not base64url".to_owned())?;
        if bytes.len() != 32 {
            return Err(format!(
                "must decode to a 32-byte P-256 private key, not {} bytes",
                bytes.len()
            ));
        }
        p256::SecretKey::from_slice(&bytes)
            .map(Self)
            .map_err(|_| "is not a valid P-256 private key".to_owned())
    }

    /// A PEM file: SEC1 (`EC PRIVATE KEY`, with or without the `EC
    /// PARAMETERS` block before it) or PKCS#8 (`PRIVATE KEY`), on P-256.
    /// The error never repeats the input.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        pem::secret_key(pem).map(Self)
    }

    /// The secret itself, for `vapid generate` to print once.
    pub fn to_base64url(&self) -> String {
        base64url(&self.0.to_bytes())
    }

    /// The uncompressed public key in base64url: the `applicationServerKey`
    /// a web page subscribes with, and the `k` parameter of every request.
    pub fn public_key_base64url(&self) -> String {
        base64url(self.0.public_key().to_encoded_point(false).as_bytes())
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("the VAPID key could not be loaded into the signer")]
pub struct VapidKeyError;

struct CachedToken {
    header: Arc<str>,
    expires_at: SystemTime,
}

/// Builds `Authorization: vapid t=…, k=…` headers.
pub struct VapidSigner {
    key_pair: EcdsaKeyPair,
    public_key: String,
    subject: String,
    rng: SystemRandom,
    /// Per origin; the least recently used beyond [`super::MAX_ORIGINS`] are dropped.
    cache: Mutex<LruCache<String, CachedToken>>,
}

impl fmt::Debug for VapidSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VapidSigner")
            .field("public_key", &self.public_key)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl VapidSigner {
    pub fn new(key: &VapidPrivateKey, subject: &str) -> Result<Self, VapidKeyError> {
        let rng = SystemRandom::new();
        let public = key.0.public_key().to_encoded_point(false);
        let key_pair = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.0.to_bytes(),
            public.as_bytes(),
            &rng,
        )
        .map_err(|_| VapidKeyError)?;
        Ok(Self {
            key_pair,
            public_key: key.public_key_base64url(),
            subject: subject.to_owned(),
            rng,
            cache: Mutex::new(LruCache::new(super::MAX_ORIGINS)),
        })
    }

    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The Authorization header for `origin` (scheme://host[:port]), from the
    /// cache while the token has more than [`REFRESH_MARGIN`] left.
    pub fn authorization(&self, origin: &str) -> Result<Arc<str>, VapidKeyError> {
        let now = SystemTime::now();
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(cached) = cache.get(origin)
            && cached.expires_at > now + REFRESH_MARGIN
        {
            return Ok(cached.header.clone());
        }
        let expires_at = now + TOKEN_LIFETIME;
        let header: Arc<str> = self.sign(origin, expires_at)?.into();
        cache.insert(
            origin.to_owned(),
            CachedToken {
                header: header.clone(),
                expires_at,
            },
        );
        Ok(header)
    }

    fn sign(&self, origin: &str, expires_at: SystemTime) -> Result<String, VapidKeyError> {
        let exp = expires_at
            .duration_since(UNIX_EPOCH)
            .map_err(|_| VapidKeyError)?
            .as_secs();
        let claims = serde_json::json!({ "aud": origin, "exp": exp, "sub": self.subject });
        let signing_input = format!(
            "{}.{}",
            base64url(br#"{"typ":"JWT","alg":"ES256"}"#),
            base64url(claims.to_string().as_bytes())
        );
        let signature = self
            .key_pair
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| VapidKeyError)?;
        Ok(format!(
            "vapid t={signing_input}.{}, k={}",
            base64url(signature.as_ref()),
            self.public_key
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_cache_keeps_at_most_max_origins() {
        let signer = VapidSigner::new(&VapidPrivateKey::generate(), "mailto:ops@example.com")
            .expect("signer");
        for n in 0..super::super::MAX_ORIGINS + 100 {
            signer
                .authorization(&format!("https://n{n}.notify.windows.com"))
                .expect("signs");
        }
        let cached = signer.cache.lock().expect("cache").len();
        assert_eq!(cached, super::super::MAX_ORIGINS);
    }

    #[test]
    fn tokens_are_cached_per_origin() {
        let signer = VapidSigner::new(&VapidPrivateKey::generate(), "mailto:ops@example.com")
            .expect("signer");
        let a = signer
            .authorization("https://fcm.googleapis.com")
            .expect("signs");
        let again = signer
            .authorization("https://fcm.googleapis.com")
            .expect("signs");
        let b = signer
            .authorization("https://web.push.apple.com")
            .expect("signs");
        assert!(Arc::ptr_eq(&a, &again));
        assert_ne!(a, b);
        assert!(a.starts_with("vapid t="));
        assert!(a.ends_with(&format!(", k={}", signer.public_key())));
    }

    #[test]
    fn private_keys_round_trip_and_never_print() {
        let key = VapidPrivateKey::generate();
        let again = VapidPrivateKey::from_base64url(&key.to_base64url()).expect("parses");
        assert_eq!(key.public_key_base64url(), again.public_key_base64url());
        assert!(!format!("{key:?}").contains(&key.to_base64url()));
        let err = VapidPrivateKey::from_base64url("c2VjcmV0LXNlY3JldA").expect_err("too short");
        assert!(!err.contains("c2VjcmV0"));
    }
}
