//! What a test sees of the fake push service: how a subscription answers,
//! what arrived (decrypted), what was refused, and a browser's subscription.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How a subscription answers a (verified) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub delay: Option<Duration>,
}

impl Reply {
    pub fn created() -> Self {
        Self::status(201)
    }

    pub fn status(status: u16) -> Self {
        Self {
            status,
            retry_after: None,
            delay: None,
        }
    }

    /// 429 with `Retry-After: seconds`.
    pub fn throttled(seconds: u64) -> Self {
        Self::status(429).with_retry_after(seconds.to_string())
    }

    pub fn with_retry_after(mut self, value: impl Into<String>) -> Self {
        self.retry_after = Some(value.into());
        self
    }

    /// Answers only after `delay`: a slow push service.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
}

/// What the browser saw for one accepted push message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedPush {
    pub subscription_id: String,
    /// The decrypted payload; empty for a push without payload.
    pub plaintext: Vec<u8>,
    pub ttl: u32,
    pub urgency: Option<String>,
    pub topic: Option<String>,
    /// The VAPID `sub` claim.
    pub vapid_subject: String,
    /// The VAPID public key (`k`) that signed it.
    pub vapid_key: String,
    pub at: Instant,
}

impl ReceivedPush {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.plaintext).into_owned()
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.plaintext).ok()
    }
}

/// A request the push service refused before the browser saw anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub subscription_id: String,
    pub status: u16,
    pub reason: String,
}

/// One browser's subscription: the public half is what `PushSubscription.toJSON()` gives.
#[derive(Clone)]
pub struct BrowserSubscription {
    pub id: String,
    pub endpoint: String,
    /// base64url of the uncompressed P-256 public key.
    pub p256dh: String,
    /// base64url of the 16-byte auth secret.
    pub auth: String,
}

impl std::fmt::Debug for BrowserSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserSubscription")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl BrowserSubscription {
    /// `PushSubscription.toJSON()`.
    pub fn to_json(&self) -> Value {
        json!({
            "endpoint": self.endpoint,
            "expirationTime": null,
            "keys": { "p256dh": self.p256dh, "auth": self.auth },
        })
    }
}
