//! The push service's checks on a request, before the browser sees it.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use web_push_native::p256;
use web_push_native::p256::ecdsa::signature::Verifier;
use web_push_native::p256::ecdsa::{Signature, VerifyingKey};

/// RFC 8292 §2: `exp` no more than 24 hours ahead.
const MAX_EXP_SECONDS: u64 = 24 * 3600;

pub(crate) struct VapidClaims {
    pub sub: String,
    pub key: String,
}

pub(crate) struct PushHeaders {
    pub ttl: u32,
    pub urgency: Option<String>,
    pub topic: Option<String>,
}

type Refusal = (StatusCode, String);

fn unauthorized(reason: impl Into<String>) -> Refusal {
    (StatusCode::UNAUTHORIZED, reason.into())
}

/// `Authorization: vapid t=<JWT>, k=<public key>` (RFC 8292 §3).
pub(crate) fn vapid(
    headers: &HeaderMap,
    audience: &str,
    application_server_key: Option<&str>,
) -> Result<VapidClaims, Refusal> {
    let value = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| unauthorized("no Authorization header"))?;
    let params = value
        .strip_prefix("vapid ")
        .ok_or_else(|| unauthorized("Authorization scheme is not vapid"))?;
    let mut token = None;
    let mut key = None;
    for param in params.split(',') {
        match param.trim().split_once('=') {
            Some(("t", v)) => token = Some(v.trim()),
            Some(("k", v)) => key = Some(v.trim()),
            _ => {}
        }
    }
    let (token, key) = token
        .zip(key)
        .ok_or_else(|| unauthorized("vapid needs both t and k"))?;
    if let Some(expected) = application_server_key
        && expected != key
    {
        return Err((
            StatusCode::FORBIDDEN,
            "the VAPID key is not the one this subscription was created with".into(),
        ));
    }
    let key_bytes = URL_SAFE_NO_PAD
        .decode(key)
        .map_err(|_| unauthorized("k is not base64url"))?;
    let verifying_key = p256::PublicKey::from_sec1_bytes(&key_bytes)
        .map(VerifyingKey::from)
        .map_err(|_| unauthorized("k is not a P-256 public key"))?;

    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(unauthorized("t is not a JWS compact token"));
    };
    let decode_json = |part: &str| -> Result<Value, Refusal> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| unauthorized("a JWT part is not base64url"))?;
        serde_json::from_slice(&bytes).map_err(|_| unauthorized("a JWT part is not JSON"))
    };
    let header = decode_json(header)?;
    if header["alg"] != "ES256" {
        return Err(unauthorized("the JWT alg is not ES256"));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .ok()
        .and_then(|bytes| Signature::from_slice(&bytes).ok())
        .ok_or_else(|| unauthorized("the JWT signature is not a 64-byte ES256 signature"))?;
    let signing_input = &token[..token.rfind('.').unwrap_or(0)];
    verifying_key
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| unauthorized("the JWT signature does not verify against k"))?;

    let claims = decode_json(claims)?;
    if claims["aud"] != audience {
        return Err(unauthorized(format!(
            "aud {} is not this push service's origin {audience}",
            claims["aud"]
        )));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let exp = claims["exp"]
        .as_u64()
        .ok_or_else(|| unauthorized("exp is missing"))?;
    if exp <= now {
        return Err(unauthorized("the JWT has expired"));
    }
    if exp > now + MAX_EXP_SECONDS {
        return Err(unauthorized("exp is more than 24 hours ahead"));
    }
    let sub = claims["sub"]
        .as_str()
        .filter(|sub| sub.starts_with("mailto:") || sub.starts_with("https:"))
        .ok_or_else(|| unauthorized("sub must be a mailto: or https: URL"))?;
    Ok(VapidClaims {
        sub: sub.to_owned(),
        key: key.to_owned(),
    })
}

/// RFC 8030 §5.2–5.4: TTL is required; Urgency and Topic are checked if present.
pub(crate) fn push_headers(headers: &HeaderMap) -> Result<PushHeaders, String> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let ttl = text("ttl")
        .ok_or("the TTL header is required")?
        .parse::<u32>()
        .map_err(|_| "TTL is not a non-negative integer")?;
    let urgency = text("urgency").map(str::to_owned);
    if let Some(urgency) = &urgency
        && !matches!(urgency.as_str(), "very-low" | "low" | "normal" | "high")
    {
        return Err(format!(
            "Urgency {urgency:?} is not very-low, low, normal or high"
        ));
    }
    let topic = text("topic").map(str::to_owned);
    if let Some(topic) = &topic
        && !(topic.len() <= 32
            && !topic.is_empty()
            && topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return Err("Topic must be at most 32 base64url characters".into());
    }
    Ok(PushHeaders {
        ttl,
        urgency,
        topic,
    })
}
