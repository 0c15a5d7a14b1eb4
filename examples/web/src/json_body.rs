//! A JSON request body whose refusal is JSON too: axum's own `Json` answers
//! a missing field or a bad content type in plain text, which the page (and
//! any client copying it) cannot read like the other errors.

use axum::Json;
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            // The sentence describes the caller's own request back to it.
            Err(rejection) => Err((
                rejection.status(),
                Json(json!({ "error": rejection.body_text() })),
            )
                .into_response()),
        }
    }
}
