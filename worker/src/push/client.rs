//! One shared HTTP client that encrypts, signs and POSTs a push message
//! (RFC 8030 §5), knowing nothing of queues or storage.

use std::fmt;
use std::time::{Duration, Instant};

use pushq_schemas::Urgency;
use pushq_schemas::keys::{decode_auth, decode_p256dh};
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use ring::rand::SystemRandom;
use secrecy::{ExposeSecret, SecretString};

use super::addresses::{NonPublicAddress, PublicOnlyResolver};
use super::ece::{self, EncryptError, UserAgentKeys};
use super::endpoint_policy::{EndpointPolicy, Refusal};
use super::limits::{Admission, Limits};
use super::vapid::VapidSigner;
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// `PUSHQ_HTTPS_PROXY`: every push through this proxy. Without it no
    /// proxy is used, whatever `HTTPS_PROXY`, `ALL_PROXY` or `HTTP_PROXY` say.
    pub proxy: Option<PushProxy>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
            proxy: None,
        }
    }
}

/// An http(s) proxy the operator named for pushes. Its URL may carry
/// credentials (sent as Proxy-Authorization), so Debug shows only its origin.
#[derive(Clone)]
pub struct PushProxy {
    url: SecretString,
    origin: String,
}

impl PushProxy {
    /// An `http://` or `https://` URL with a host and nothing after the
    /// port; the refusal never quotes the value, which may hold a password.
    pub fn parse(value: &str) -> Result<Self, String> {
        let url = url::Url::parse(value.trim()).map_err(|_| "is not a URL".to_owned())?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must be an http:// or https:// URL".to_owned());
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("has no host".to_owned());
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err("must name only the proxy's scheme, host and port".to_owned());
        }
        Ok(Self {
            origin: url.origin().ascii_serialization(),
            url: SecretString::from(url.as_str().to_owned()),
        })
    }

    /// `http://proxy.internal:3128`, without credentials.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

impl fmt::Debug for PushProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushProxy")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// What to send to one subscription.
#[derive(Debug, Clone, Copy)]
pub struct PushMessage<'a> {
    pub endpoint: &'a str,
    pub p256dh: &'a str,
    pub auth: &'a str,
    pub payload: &'a [u8],
    pub ttl_seconds: u32,
    pub urgency: Urgency,
    pub topic: Option<&'a str>,
}

/// The push service's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushResponse {
    pub status: u16,
    pub retry_after: Option<String>,
}

/// Why no answer was had; `classify::classify_error` tells what a retry may fix.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("{0}")]
    Refused(Refusal),
    #[error("could not encrypt for this subscription: {0}")]
    Encrypt(#[from] EncryptError),
    #[error("invalid subscription keys: {0}")]
    Keys(String),
    #[error("could not sign the VAPID token")]
    Vapid,
    /// Our own rate limit for this push service asks for a longer wait than
    /// is worth holding a worker for; nothing was sent.
    #[error("rate limited here for {0:?}")]
    Deferred(Duration),
    #[error("the push service did not answer in time")]
    Timeout,
    #[error("could not connect to the push service")]
    Connect(#[source] reqwest::Error),
    #[error("the request to the push service failed")]
    Request(#[source] reqwest::Error),
}

#[derive(Debug)]
pub struct PushClient {
    http: reqwest::Client,
    rng: SystemRandom,
    vapid: VapidSigner,
    policy: EndpointPolicy,
    limits: Limits,
    metrics: Metrics,
}

/// rustls needs one process-wide crypto provider before any client is built;
/// ring is already in the tree for the Web Push crypto.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl PushClient {
    pub fn new(
        vapid: VapidSigner,
        policy: EndpointPolicy,
        limits: Limits,
        settings: &HttpSettings,
        metrics: Metrics,
    ) -> Result<Self, reqwest::Error> {
        install_crypto_provider();
        let builder = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            // A push service never redirects; following one would bypass the endpoint policy.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("pushq/", env!("CARGO_PKG_VERSION")));
        let builder = match &settings.proxy {
            // reqwest would honour HTTPS_PROXY, ALL_PROXY and HTTP_PROXY from
            // the environment: a proxy resolves push services' names itself,
            // around the address check, so an ambient one is never used.
            None => builder
                .no_proxy()
                .dns_resolver(std::sync::Arc::new(PublicOnlyResolver)),
            // The operator's proxy is the only peer: it resolves push
            // services' names and answers for where they lead (the endpoint
            // policy still applies here); its own name, often a private
            // address, is resolved as the system does.
            Some(proxy) => builder.proxy(reqwest::Proxy::all(proxy.url.expose_secret())?),
        };
        let http = builder.build()?;
        Ok(Self {
            http,
            rng: SystemRandom::new(),
            vapid,
            policy,
            limits,
            metrics,
        })
    }

    pub fn policy(&self) -> &EndpointPolicy {
        &self.policy
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn vapid_public_key(&self) -> &str {
        self.vapid.public_key()
    }

    /// Encrypts (when there is a payload), signs and POSTs one message.
    pub async fn deliver(&self, message: PushMessage<'_>) -> Result<PushResponse, DeliveryError> {
        let url = self
            .policy
            .check(message.endpoint)
            .map_err(DeliveryError::Refused)?;
        let origin = url.origin().ascii_serialization();
        let waiting_since = Instant::now();
        let _permits = match self
            .limits
            .admit(&origin, url.host_str().unwrap_or_default())
            .await
        {
            Admission::Go(permits) => permits,
            Admission::Defer(wait) => return Err(DeliveryError::Deferred(wait)),
        };
        self.metrics.rate_limit_wait(waiting_since.elapsed());
        let authorization = self
            .vapid
            .authorization(&origin)
            .map_err(|_| DeliveryError::Vapid)?;
        let mut request = self
            .http
            .post(url)
            .header("TTL", message.ttl_seconds)
            .header("Urgency", message.urgency.as_header())
            .header(
                AUTHORIZATION,
                HeaderValue::from_str(&authorization).map_err(|_| DeliveryError::Vapid)?,
            );
        if let Some(topic) = message.topic {
            request = request.header("Topic", topic);
        }
        // RFC 8030 §5: a push without a payload carries no body and no coding.
        if !message.payload.is_empty() {
            let p256dh = decode_p256dh(message.p256dh).map_err(DeliveryError::Keys)?;
            let auth = decode_auth(message.auth).map_err(DeliveryError::Keys)?;
            let body = ece::encrypt(
                &self.rng,
                UserAgentKeys {
                    p256dh: &p256dh,
                    auth: &auth,
                },
                message.payload,
            )?;
            request = request
                .header(CONTENT_ENCODING, "aes128gcm")
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(body);
        }
        let _in_flight = self.metrics.in_flight();
        let sent_at = Instant::now();
        let response = request.send().await;
        self.metrics.push_duration(sent_at.elapsed());
        let response = response.map_err(|err| {
            if let Some(refused) = non_public_address(&err) {
                DeliveryError::Refused(Refusal(format!(
                    "endpoint origin {origin} is refused: {refused}"
                )))
            } else if err.is_timeout() {
                DeliveryError::Timeout
            } else if err.is_connect() {
                DeliveryError::Connect(err)
            } else {
                DeliveryError::Request(err)
            }
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        // The body is never read: dropping the response discards at most what
        // is already buffered, so a hostile service cannot make us hold megabytes.
        drop(response);
        Ok(PushResponse {
            status,
            retry_after,
        })
    }
}

/// The resolver's refusal, if that is why the request failed.
fn non_public_address(err: &reqwest::Error) -> Option<&NonPublicAddress> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<NonPublicAddress>() {
            return Some(refused);
        }
        source = cause.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::push::VapidPrivateKey;
    use crate::push::limits::LimitSettings;

    #[tokio::test]
    async fn an_explicit_proxy_carries_the_push_with_its_credentials() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let addr = listener.local_addr().expect("addr");
        let proxy = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("a connection");
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            while !head.windows(4).any(|window| window == b"\r\n\r\n") {
                let read = stream.read(&mut buffer).await.expect("reads");
                assert!(read > 0, "the request ended early");
                head.extend_from_slice(&buffer[..read]);
            }
            stream
                .write_all(
                    b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await
                .expect("answers");
            String::from_utf8_lossy(&head).into_owned()
        });
        let settings = HttpSettings {
            proxy: Some(PushProxy::parse(&format!("http://pushq:hunter2@{addr}")).expect("a URL")),
            ..HttpSettings::default()
        };
        let client = PushClient::new(
            VapidSigner::new(&VapidPrivateKey::generate(), "mailto:ops@example.com")
                .expect("signer"),
            EndpointPolicy::parse("push.example", true).expect("policy"),
            Limits::new(LimitSettings::default()),
            &settings,
            Metrics::new(),
        )
        .expect("client");
        // push.example resolves nowhere: only the proxy can take it there.
        let response = client
            .deliver(PushMessage {
                endpoint: "http://push.example/push/1",
                p256dh: "",
                auth: "",
                payload: b"",
                ttl_seconds: 60,
                urgency: Urgency::Normal,
                topic: None,
            })
            .await
            .expect("answered by the proxy");
        assert_eq!(response.status, 201);
        let head = proxy.await.expect("proxy task");
        assert!(
            head.starts_with("POST http://push.example/push/1 HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("proxy-authorization: basic"),
            "{head}"
        );
    }

    #[test]
    fn a_proxy_is_an_http_origin_and_hides_its_credentials() {
        let proxy = PushProxy::parse("https://u:hunter2@proxy.internal:8443").expect("valid");
        assert_eq!(proxy.origin(), "https://proxy.internal:8443");
        assert!(!format!("{proxy:?}").contains("hunter2"));
        for refused in ["", "proxy:3128", "socks5://proxy", "http://proxy/path?q"] {
            assert!(PushProxy::parse(refused).is_err(), "{refused}");
        }
    }
}
