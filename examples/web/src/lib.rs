//! The backend of a web app that sends Web Push through pushq, the way a
//! microservice integrates it: it serves the page and its service worker,
//! gives the page the VAPID public key, turns the browser's subscription into
//! a `pushq.subscription.register` event and a button press into a
//! `pushq.notification.send`. It never talks to a push service itself.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use pushq_producer::{
    InvalidKind, NotificationSend, Producer, PublishError, PushSubscription, SubscriptionRegister,
    SubscriptionUnregister, Target,
};
use pushq_schemas::error_text::sentence;
use serde::Deserialize;
use serde_json::json;

mod json_body;
pub mod startup;
pub mod vapid_key;

use json_body::JsonBody;

const INDEX_HTML: &str = include_str!("../static/index.html");
const APP_JS: &str = include_str!("../static/app.js");
const SERVICE_WORKER_JS: &str = include_str!("../static/sw.js");
const ICON_SVG: &str = include_str!("../static/icon.svg");

/// How long a push service keeps a test notification for an offline browser.
const NOTIFICATION_TTL_SECONDS: u32 = 3600;

#[derive(Debug, Clone)]
pub struct AppState {
    /// Configured with the workers' endpoint policy
    /// (`Producer::with_endpoint_policy`), so that a subscription they would
    /// refuse is refused here, in the answer the page shows.
    pub producer: Arc<Producer>,
    /// base64url, as `pushq-worker vapid public` prints it.
    pub vapid_public_key: String,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route("/app.js", get(|| async { page("text/javascript", APP_JS) }))
        .route(
            "/sw.js",
            get(|| async { page("text/javascript", SERVICE_WORKER_JS) }),
        )
        .route(
            "/icon.svg",
            get(|| async { page("image/svg+xml", ICON_SVG) }),
        )
        .route("/vapid-public-key", get(vapid_public_key))
        .route("/subscriptions", post(subscribe).delete(unsubscribe))
        .route("/notify", post(notify))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "this method is not allowed here",
            )
        })
        .with_state(state)
}

/// The shape of every error the example answers, so the page reads them all
/// alike.
fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // A stale service worker would keep old behaviour alive for a day.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn vapid_public_key(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain")],
        state.vapid_public_key.clone(),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Subscribe {
    user: String,
    subscription: PushSubscription,
    #[serde(default)]
    tags: Vec<String>,
}

async fn subscribe(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<Subscribe>,
) -> Response {
    let register = SubscriptionRegister {
        user: request.user,
        subscription: request.subscription,
        tags: request.tags,
    };
    answer(
        state.producer.register(&register).await,
        StatusCode::ACCEPTED,
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Unsubscribe {
    endpoint: String,
}

async fn unsubscribe(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<Unsubscribe>,
) -> Response {
    let unregister = SubscriptionUnregister::Endpoint(request.endpoint);
    answer(
        state.producer.unregister(&unregister).await,
        StatusCode::ACCEPTED,
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Notify {
    user: String,
    title: String,
    body: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    tag: Option<String>,
}

async fn notify(State(state): State<AppState>, JsonBody(request): JsonBody<Notify>) -> Response {
    // What the service worker reads to show the notification.
    let payload = json!({
        "title": request.title,
        "body": request.body,
        "icon": "/icon.svg",
        "url": request.url.unwrap_or_else(|| "/".into()),
        "tag": request.tag,
    });
    let mut send = NotificationSend::new(Target::User(request.user), Some(payload));
    send.ttl = NOTIFICATION_TTL_SECONDS;
    answer(state.producer.send(&send).await, StatusCode::ACCEPTED)
}

/// The event id on success; a contract violation is the caller's fault (400),
/// an endpoint the push policy refuses too (422: well-formed, but no worker
/// would deliver to it), anything else ours (503, worth retrying).
fn answer(published: Result<String, PublishError>, success: StatusCode) -> Response {
    match published {
        Ok(id) => (success, Json(json!({ "id": id }))).into_response(),
        Err(PublishError::Invalid { source, .. })
            if source.kind == InvalidKind::EndpointRefused =>
        {
            error(StatusCode::UNPROCESSABLE_ENTITY, &source.message)
        }
        Err(err @ PublishError::Invalid { .. }) => error(StatusCode::BAD_REQUEST, &err.to_string()),
        Err(err) => {
            tracing::error!(error = %sentence(&err), "publishing to pushq failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "notifications are unavailable right now",
            )
        }
    }
}
