//! The `data` of each producer event type, with the same rules as the JSON
//! Schema files: serde for the shape, `validate` for what serde cannot say.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use crate::error::{InvalidEvent, InvalidKind, check_bytes, excerpt};
use crate::event_types;
use crate::field_errors::from_value;
use crate::keys::{decode_auth, decode_p256dh};
use crate::payload::{MAX_PLAINTEXT_BYTES, payload_bytes};

// Every string that is stored or sent on is bounded in UTF-8 bytes, the unit
// PostgreSQL's index entries (about 2,700 bytes at most) and HTTP and AMQP
// headers are bounded in; a character may take four. Over its bound a field
// is `field_too_long`.
pub const MAX_USER_BYTES: usize = 256;
pub const MAX_TAG_BYTES: usize = 64;
pub const MAX_TAGS: usize = 64;
/// Unique in `subscriptions`: one index entry each.
pub const MAX_ENDPOINT_BYTES: usize = 2048;
pub const MAX_TTL_SECONDS: u32 = 2_419_200;
pub const DEFAULT_TTL_SECONDS: u32 = 86_400;
/// Base64url, so characters and bytes are the same.
pub const MAX_TOPIC_BYTES: usize = 32;
/// 65 bytes in base64url: 87 characters, 88 padded.
pub const MAX_P256DH_BYTES: usize = 88;
/// 16 bytes in base64url: 22 characters, 24 padded.
pub const MAX_AUTH_BYTES: usize = 24;

/// `PushSubscription.toJSON()` as a browser gives it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct PushSubscription {
    pub endpoint: String,
    /// Milliseconds since the epoch after which the browser drops the subscription.
    #[serde(
        rename = "expirationTime",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub expiration_time: Option<f64>,
    pub keys: SubscriptionKeys,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionKeys {
    pub p256dh: String,
    pub auth: String,
}

/// The endpoint is a capability URL and the keys decrypt the user's messages:
/// neither belongs in a log, so Debug shows the origin only.
impl fmt::Debug for PushSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushSubscription")
            .field("origin", &endpoint_origin(&self.endpoint))
            .field("expiration_time", &self.expiration_time)
            .field("keys", &self.keys)
            .finish()
    }
}

impl fmt::Debug for SubscriptionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubscriptionKeys { .. }")
    }
}

/// The origin (scheme, host, port) of an endpoint: what logs, metrics and
/// results may show of it.
pub fn endpoint_origin(endpoint: &str) -> String {
    Url::parse(endpoint)
        .map(|url| url.origin().ascii_serialization())
        .unwrap_or_else(|_| "invalid-endpoint".to_owned())
}

impl PushSubscription {
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        validate_endpoint(&self.endpoint)?;
        if let Some(expiration) = self.expiration_time
            && !(expiration.is_finite() && expiration >= 0.0)
        {
            return Err(InvalidEvent::data(
                "subscription.expirationTime must be a non-negative number of milliseconds or null",
            ));
        }
        check_bytes("keys.p256dh", &self.keys.p256dh, MAX_P256DH_BYTES)?;
        check_bytes("keys.auth", &self.keys.auth, MAX_AUTH_BYTES)?;
        decode_p256dh(&self.keys.p256dh).map_err(InvalidEvent::data)?;
        decode_auth(&self.keys.auth).map_err(InvalidEvent::data)?;
        Ok(())
    }
}

/// The structural check shared by producers and workers: an absolute http(s)
/// URL with a host, no credentials and no fragment. Which hosts and schemes a
/// worker accepts is its endpoint policy, configured per deployment.
pub fn validate_endpoint(endpoint: &str) -> Result<Url, InvalidEvent> {
    check_bytes("endpoint", endpoint, MAX_ENDPOINT_BYTES)?;
    refuse_nul("endpoint", endpoint)?;
    let url = Url::parse(endpoint)
        .map_err(|err| InvalidEvent::data(format!("endpoint is not an absolute URL: {err}")))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(InvalidEvent::data(
            "endpoint must be an https:// (or, where allowed, http://) URL",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(InvalidEvent::data("endpoint has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(InvalidEvent::data("endpoint must not carry credentials"));
    }
    if url.fragment().is_some() {
        return Err(InvalidEvent::data("endpoint must not have a #fragment"));
    }
    Ok(url)
}

fn validate_user(field: &str, user: &str) -> Result<(), InvalidEvent> {
    validate_name(field, user, MAX_USER_BYTES)
}

fn validate_tag(field: &str, tag: &str) -> Result<(), InvalidEvent> {
    validate_name(field, tag, MAX_TAG_BYTES)
}

/// A user id or a tag: not empty, at most `max_bytes`, storable.
fn validate_name(field: &str, name: &str, max_bytes: usize) -> Result<(), InvalidEvent> {
    if name.is_empty() {
        return Err(InvalidEvent::data(format!(
            "{field} must be 1 to {max_bytes} bytes, not empty"
        )));
    }
    check_bytes(field, name, max_bytes)?;
    refuse_nul(field, name)
}

/// PostgreSQL's text cannot hold NUL: a statement naming one fails.
fn refuse_nul(field: &str, text: &str) -> Result<(), InvalidEvent> {
    if text.contains('\0') {
        return Err(InvalidEvent::data(format!(
            "{field} contains a NUL character, which cannot be stored"
        )));
    }
    Ok(())
}

/// `pushq.subscription.register`: upsert by endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionRegister {
    pub user: String,
    pub subscription: PushSubscription,
    #[serde(default)]
    pub tags: Vec<String>,
}

impl SubscriptionRegister {
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        validate_user("user", &self.user)?;
        self.subscription.validate()?;
        if self.tags.len() > MAX_TAGS {
            return Err(InvalidEvent::data(format!(
                "tags holds {} entries; at most {MAX_TAGS} are allowed",
                self.tags.len()
            )));
        }
        for tag in &self.tags {
            validate_tag("each tag", tag)?;
        }
        Ok(())
    }
}

/// `pushq.subscription.unregister`: one subscription, or all of a user's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionUnregister {
    Endpoint(String),
    User(String),
}

impl SubscriptionUnregister {
    pub fn parse(data: &Value) -> Result<Self, InvalidEvent> {
        let object = data
            .as_object()
            .ok_or_else(|| InvalidEvent::data("data must be a JSON object"))?;
        if let Some(extra) = object
            .keys()
            .find(|key| !matches!(key.as_str(), "endpoint" | "user"))
        {
            return Err(InvalidEvent::data(format!(
                "unknown field `{}`: an unregister names `endpoint` or `user`",
                excerpt(extra)
            )));
        }
        let string = |key: &str| {
            object.get(key).map(|value| {
                value
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| InvalidEvent::data(format!("{key} must be a string")))
            })
        };
        match (string("endpoint"), string("user")) {
            (Some(endpoint), None) => {
                let endpoint = endpoint?;
                validate_endpoint(&endpoint)?;
                Ok(Self::Endpoint(endpoint))
            }
            (None, Some(user)) => {
                let user = user?;
                validate_user("user", &user)?;
                Ok(Self::User(user))
            }
            _ => Err(InvalidEvent::data(
                "an unregister names exactly one of `endpoint` and `user`",
            )),
        }
    }

    pub fn validate(&self) -> Result<(), InvalidEvent> {
        Self::parse(&serde_json::to_value(self).unwrap_or(Value::Null)).map(drop)
    }
}

/// Who a notification goes to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Target {
    /// All of a user's subscriptions.
    User(String),
    /// All subscriptions with this tag.
    Tag(String),
    /// The stored subscription with this endpoint.
    Endpoint(String),
    /// A one-off subscription, not stored.
    Subscription(PushSubscription),
}

pub const TARGET_KINDS: [&str; 4] = ["user", "tag", "endpoint", "subscription"];

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::User(_) => "user",
            Self::Tag(_) => "tag",
            Self::Endpoint(_) => "endpoint",
            Self::Subscription(_) => "subscription",
        }
    }

    fn validate(&self) -> Result<(), InvalidEvent> {
        match self {
            Self::User(user) => validate_user("to.user", user),
            Self::Tag(tag) => validate_tag("to.tag", tag),
            Self::Endpoint(endpoint) => validate_endpoint(endpoint).map(drop),
            Self::Subscription(subscription) => subscription.validate(),
        }
    }
}

/// RFC 8030 §5.3: how eagerly the push service should wake the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Urgency {
    VeryLow,
    Low,
    #[default]
    Normal,
    High,
}

impl Urgency {
    pub fn as_header(self) -> &'static str {
        match self {
            Self::VeryLow => "very-low",
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
        }
    }
}

fn default_ttl() -> u32 {
    DEFAULT_TTL_SECONDS
}

/// `pushq.notification.send`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationSend {
    pub to: Target,
    /// Any JSON value; absent or null sends an empty push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// Seconds the push service keeps the message for an offline device.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    #[serde(default)]
    pub urgency: Urgency,
    /// Replaces an undelivered message with the same topic (RFC 8030 §5.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

impl NotificationSend {
    pub fn new(to: Target, payload: Option<Value>) -> Self {
        Self {
            to,
            payload,
            ttl: DEFAULT_TTL_SECONDS,
            urgency: Urgency::Normal,
            topic: None,
        }
    }

    pub fn payload_bytes(&self) -> Vec<u8> {
        payload_bytes(self.payload.as_ref())
    }

    pub fn validate(&self) -> Result<(), InvalidEvent> {
        self.to.validate()?;
        if self.ttl > MAX_TTL_SECONDS {
            return Err(InvalidEvent::data(format!(
                "ttl must be 0 to {MAX_TTL_SECONDS} seconds, not {}",
                self.ttl
            )));
        }
        if let Some(topic) = &self.topic {
            check_bytes("topic", topic, MAX_TOPIC_BYTES)?;
            let valid = !topic.is_empty()
                && topic
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err(InvalidEvent::data(format!(
                    "topic must be 1 to {MAX_TOPIC_BYTES} characters of the base64url alphabet"
                )));
            }
        }
        let size = self.payload_bytes().len();
        if size > MAX_PLAINTEXT_BYTES {
            return Err(InvalidEvent::new(
                InvalidKind::PayloadTooLarge,
                format!(
                    "payload is {size} bytes once encoded; a push message holds at most {MAX_PLAINTEXT_BYTES}"
                ),
            ));
        }
        Ok(())
    }
}

/// A producer event's data, parsed and validated for its type.
#[derive(Debug, Clone, PartialEq)]
pub enum ProducerEvent {
    Register(SubscriptionRegister),
    Unregister(SubscriptionUnregister),
    Send(NotificationSend),
}

impl ProducerEvent {
    /// `data` is the event's data; a missing one is invalid for every type.
    pub fn parse(event_type: &str, data: Option<&Value>) -> Result<Self, InvalidEvent> {
        let known = [
            event_types::SUBSCRIPTION_REGISTER,
            event_types::SUBSCRIPTION_UNREGISTER,
            event_types::NOTIFICATION_SEND,
        ];
        if !known.contains(&event_type) {
            return Err(InvalidEvent::new(
                InvalidKind::UnknownType,
                format!(
                    "event type {:?} is not one pushq handles",
                    excerpt(event_type)
                ),
            ));
        }
        let data = data.ok_or_else(|| InvalidEvent::data("the event has no data"))?;
        if !data.is_object() {
            return Err(InvalidEvent::data("data must be a JSON object"));
        }
        match event_type {
            event_types::SUBSCRIPTION_REGISTER => {
                let register: SubscriptionRegister = from_value(data)?;
                register.validate()?;
                Ok(Self::Register(register))
            }
            event_types::SUBSCRIPTION_UNREGISTER => {
                SubscriptionUnregister::parse(data).map(Self::Unregister)
            }
            _ => {
                check_target_kind(data.get("to"))?;
                let send: NotificationSend = from_value(data)?;
                send.validate()?;
                Ok(Self::Send(send))
            }
        }
    }

    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Register(_) => event_types::SUBSCRIPTION_REGISTER,
            Self::Unregister(_) => event_types::SUBSCRIPTION_UNREGISTER,
            Self::Send(_) => event_types::NOTIFICATION_SEND,
        }
    }
}

/// A `to` object naming none of the target kinds is `unknown_target`: most
/// likely a newer producer than this worker, which an operator wants told apart
/// from a malformed event.
fn check_target_kind(to: Option<&Value>) -> Result<(), InvalidEvent> {
    if let Some(Value::Object(to)) = to
        && !to.keys().any(|key| TARGET_KINDS.contains(&key.as_str()))
    {
        let named: Vec<String> = to.keys().take(8).map(|key| excerpt(key)).collect();
        return Err(InvalidEvent::new(
            InvalidKind::UnknownTarget,
            format!(
                "target names {named:?}; expected one of {}",
                TARGET_KINDS.join(", ")
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
