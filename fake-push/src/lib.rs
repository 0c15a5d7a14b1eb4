//! A push service and a browser in one process, on loopback, for tests, the
//! demo and benchmarks. It behaves as RFC 8030/8292 push services do: it checks
//! TTL, Urgency, Topic, Content-Encoding and size, verifies the VAPID JWT
//! (signature against `k`, `aud`, `exp`, `sub`), and then, as the browser
//! would, decrypts the body with the subscription's own private key using an
//! implementation independent of pushq's (RustCrypto via `web-push-native`).
//! Each subscription answers as a test tells it to: 201 by default, or any
//! status, Retry-After, or a delay.

mod types;
mod verify;

pub use types::{BrowserSubscription, ReceivedPush, Rejection, Reply};

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::sync::{oneshot, watch};
use web_push_native::p256;
use web_push_native::p256::elliptic_curve::sec1::ToEncodedPoint;

/// RFC 8291 §4: a push message body is at most 4096 bytes.
pub const MAX_BODY_BYTES: usize = 4096;

struct SubscriptionState {
    secret: p256::SecretKey,
    auth: web_push_native::Auth,
    /// The `applicationServerKey` the page subscribed with; requests signed
    /// by another key are refused with 403, as real push services do.
    application_server_key: Option<String>,
    script: VecDeque<Reply>,
    default_reply: Reply,
}

#[derive(Default)]
struct Inner {
    subscriptions: HashMap<String, SubscriptionState>,
    received: Vec<ReceivedPush>,
    rejections: Vec<Rejection>,
    answered: Vec<(String, u16)>,
}

struct Shared {
    inner: Mutex<Inner>,
    /// The count of accepted messages, so waiters wake on change instead of polling.
    accepted: watch::Sender<usize>,
    /// The count of verified requests, counted before any reply delay.
    seen: watch::Sender<usize>,
    audience: String,
    base_url: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The running service. Dropping it stops the server.
pub struct FakePushService {
    shared: Arc<Shared>,
    addr: SocketAddr,
    router: Router,
    /// `None` while it refuses connections.
    serving: Mutex<Option<Serving>>,
}

struct Serving {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

fn serve(listener: tokio::net::TcpListener, router: Router) -> Serving {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let server = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        if let Err(err) = server.await {
            tracing::warn!(error = %err, "fake push service stopped");
        }
    });
    Serving { stop, task }
}

impl std::fmt::Debug for FakePushService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakePushService")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("waited {waited:?} for {wanted} accepted push messages, got {got}")]
pub struct WaitTimedOut {
    pub wanted: usize,
    pub got: usize,
    pub waited: Duration,
}

impl FakePushService {
    /// Starts on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let base_url = format!("http://{addr}");
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
            accepted: watch::channel(0).0,
            seen: watch::channel(0).0,
            audience: base_url.clone(),
            base_url,
        });
        let app = Router::new()
            .route("/push/{id}", post(receive))
            // Read a little more than allowed so that oversize bodies get 413, not a reset.
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES * 4))
            .with_state(shared.clone());
        Ok(Self {
            shared,
            addr,
            serving: Mutex::new(Some(serve(listener, app.clone()))),
            router: app,
        })
    }

    /// Stops listening and closes its connections once their requests are
    /// answered, so that connecting fails as it does to a push service that
    /// is down, until [`FakePushService::accept_connections`].
    pub async fn refuse_connections(&self) {
        let serving = self.serving_slot().take();
        if let Some(serving) = serving {
            let _ = serving.stop.send(());
            let _ = serving.task.await;
        }
    }

    /// Listens again on the same address.
    pub async fn accept_connections(&self) -> std::io::Result<()> {
        if self.serving_slot().is_some() {
            return Ok(());
        }
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        *self.serving_slot() = Some(serve(listener, self.router.clone()));
        Ok(())
    }

    fn serving_slot(&self) -> MutexGuard<'_, Option<Serving>> {
        self.serving
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port`, as `PUSHQ_ENDPOINT_HOSTS` wants it.
    pub fn host_entry(&self) -> String {
        self.addr.to_string()
    }

    /// A new browser subscription with real keys, accepting any VAPID key.
    pub fn subscribe(&self) -> BrowserSubscription {
        self.subscribe_inner(None)
    }

    /// A subscription bound to `application_server_key` (base64url), as
    /// `pushManager.subscribe({applicationServerKey})` binds it.
    pub fn subscribe_with_key(&self, application_server_key: &str) -> BrowserSubscription {
        self.subscribe_inner(Some(application_server_key.to_owned()))
    }

    fn subscribe_inner(&self, application_server_key: Option<String>) -> BrowserSubscription {
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let mut auth = web_push_native::Auth::default();
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut auth);
        let mut id_bytes = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id_bytes);
        let id = URL_SAFE_NO_PAD.encode(id_bytes);
        let subscription = BrowserSubscription {
            endpoint: format!("{}/push/{id}", self.shared.base_url),
            p256dh: URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes()),
            auth: URL_SAFE_NO_PAD.encode(auth),
            id: id.clone(),
        };
        self.shared.lock().subscriptions.insert(
            id,
            SubscriptionState {
                secret,
                auth,
                application_server_key,
                script: VecDeque::new(),
                default_reply: Reply::created(),
            },
        );
        subscription
    }

    /// The next requests to `subscription` get these replies, in order; then
    /// the default.
    pub fn script(
        &self,
        subscription: &BrowserSubscription,
        replies: impl IntoIterator<Item = Reply>,
    ) {
        if let Some(state) = self.shared.lock().subscriptions.get_mut(&subscription.id) {
            state.script.extend(replies);
        }
    }

    /// Every later request to `subscription` gets `reply` (after any script).
    pub fn answer_always(&self, subscription: &BrowserSubscription, reply: Reply) {
        if let Some(state) = self.shared.lock().subscriptions.get_mut(&subscription.id) {
            state.default_reply = reply;
        }
    }

    /// The browser unsubscribed: later requests get 410 Gone.
    pub fn unsubscribe(&self, subscription: &BrowserSubscription) {
        self.answer_always(subscription, Reply::status(410));
    }

    /// Every message accepted (2xx) so far, decrypted.
    pub fn received(&self) -> Vec<ReceivedPush> {
        self.shared.lock().received.clone()
    }

    pub fn received_by(&self, subscription: &BrowserSubscription) -> Vec<ReceivedPush> {
        self.shared
            .lock()
            .received
            .iter()
            .filter(|push| push.subscription_id == subscription.id)
            .cloned()
            .collect()
    }

    pub fn received_count(&self) -> usize {
        *self.shared.accepted.borrow()
    }

    /// Requests refused before reaching the browser (bad VAPID, headers, body).
    pub fn rejections(&self) -> Vec<Rejection> {
        self.shared.lock().rejections.clone()
    }

    /// Every verified request with the status it was answered with.
    pub fn answered(&self) -> Vec<(String, u16)> {
        self.shared.lock().answered.clone()
    }

    /// A receiver of the accepted count, for progress displays.
    pub fn watch_received(&self) -> watch::Receiver<usize> {
        self.shared.accepted.subscribe()
    }

    /// Waits until at least `count` verified requests arrived (answered or
    /// not yet: a delayed reply is still pending), at most `timeout`.
    pub async fn wait_for_requests(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<(), WaitTimedOut> {
        let mut seen = self.shared.seen.subscribe();
        match tokio::time::timeout(timeout, seen.wait_for(|n| *n >= count)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(WaitTimedOut {
                wanted: count,
                got: *self.shared.seen.borrow(),
                waited: timeout,
            }),
        }
    }

    /// Waits until at least `count` messages were accepted, at most `timeout`.
    pub async fn wait_for_received(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<ReceivedPush>, WaitTimedOut> {
        let mut accepted = self.shared.accepted.subscribe();
        let reached = tokio::time::timeout(timeout, accepted.wait_for(|n| *n >= count)).await;
        match reached {
            Ok(Ok(_)) => Ok(self.received()),
            _ => Err(WaitTimedOut {
                wanted: count,
                got: self.received_count(),
                waited: timeout,
            }),
        }
    }
}

impl Drop for FakePushService {
    fn drop(&mut self) {
        if let Some(serving) = self.serving_slot().take() {
            let _ = serving.stop.send(());
        }
    }
}

fn reject(shared: &Shared, id: &str, status: StatusCode, reason: String) -> Response {
    shared.lock().rejections.push(Rejection {
        subscription_id: id.to_owned(),
        status: status.as_u16(),
        reason: reason.clone(),
    });
    (status, reason).into_response()
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (secret, auth, application_server_key) = {
        let inner = shared.lock();
        match inner.subscriptions.get(&id) {
            Some(state) => (
                state.secret.clone(),
                state.auth,
                state.application_server_key.clone(),
            ),
            None => {
                return reject(
                    &shared,
                    &id,
                    StatusCode::NOT_FOUND,
                    "no such subscription".into(),
                );
            }
        }
    };
    let claims = match verify::vapid(
        &headers,
        &shared.audience,
        application_server_key.as_deref(),
    ) {
        Ok(claims) => claims,
        Err((status, reason)) => return reject(&shared, &id, status, reason),
    };
    let request = match verify::push_headers(&headers) {
        Ok(request) => request,
        Err(reason) => return reject(&shared, &id, StatusCode::BAD_REQUEST, reason),
    };
    if body.len() > MAX_BODY_BYTES {
        return reject(
            &shared,
            &id,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body is {} bytes; at most {MAX_BODY_BYTES}", body.len()),
        );
    }
    let plaintext = if body.is_empty() {
        Vec::new()
    } else {
        if headers
            .get("content-encoding")
            .and_then(|v| v.to_str().ok())
            != Some("aes128gcm")
        {
            return reject(
                &shared,
                &id,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Encoding must be aes128gcm".into(),
            );
        }
        match web_push_native::decrypt(body.to_vec(), &secret, &auth) {
            Ok(plaintext) => plaintext,
            Err(err) => {
                return reject(
                    &shared,
                    &id,
                    StatusCode::BAD_REQUEST,
                    format!("cannot decrypt: {err:?}"),
                );
            }
        }
    };

    let reply = {
        let mut inner = shared.lock();
        let Some(state) = inner.subscriptions.get_mut(&id) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        state
            .script
            .pop_front()
            .unwrap_or_else(|| state.default_reply.clone())
    };
    shared.seen.send_modify(|count| *count += 1);
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    let accepted = (200..300).contains(&reply.status);
    {
        let mut inner = shared.lock();
        inner.answered.push((id.clone(), reply.status));
        if accepted {
            inner.received.push(ReceivedPush {
                subscription_id: id.clone(),
                plaintext,
                ttl: request.ttl,
                urgency: request.urgency,
                topic: request.topic,
                vapid_subject: claims.sub,
                vapid_key: claims.key,
                at: Instant::now(),
            });
        }
    }
    if accepted {
        shared.accepted.send_modify(|count| *count += 1);
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = status.into_response();
    if accepted && let Ok(location) = format!("{}/message/{id}", shared.base_url).parse() {
        response.headers_mut().insert("location", location);
    }
    if let Some(retry_after) = reply.retry_after.and_then(|value| value.parse().ok()) {
        response.headers_mut().insert("retry-after", retry_after);
    }
    response
}
