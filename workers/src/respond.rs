//! Every HTTP response the worker builds: JSON bodies, SSE streams, and the
//! one place errors become OpenAI-shaped error responses.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use protocol::{ApiError, ErrorKind};
use serde::Serialize;

/// The body of every response: a whole JSON document or an open-ended event stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => with_body(
            status,
            "application/json",
            Full::new(Bytes::from(bytes)).boxed_unsync(),
        ),
        Err(e) => error(&ApiError::new(
            ErrorKind::Internal,
            format!("cannot serialize response: {e}"),
        )),
    }
}

/// A `text/event-stream` response; `body` yields the `data:` events.
pub fn sse(body: Body) -> Response<Body> {
    let mut response = with_body(StatusCode::OK, "text/event-stream", body);
    response
        .headers_mut()
        .insert(CACHE_CONTROL, http::HeaderValue::from_static("no-cache"));
    response
}

/// The response for `error`. Server-side failures are logged here, once;
/// client mistakes only at debug level.
pub fn error(error: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::warn!(status = status.as_u16(), error = %error.message, "request failed");
    } else {
        tracing::debug!(status = status.as_u16(), error = %error.message, "request refused");
    }
    with_body(
        status,
        "application/json",
        Full::new(Bytes::from(error.to_json())).boxed_unsync(),
    )
}

/// An error that happens after a stream's 200 was sent: it can only be an event.
pub fn sse_error(error: &ApiError) -> String {
    tracing::warn!(error = %error.message, "stream failed");
    format!("data: {}\n\n", error.to_json())
}

/// A request body that could not be read: too big, or the client broke off.
pub fn body_error(error: &(dyn std::error::Error + 'static), limit: usize) -> ApiError {
    if error.is::<http_body_util::LengthLimitError>() {
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body exceeds {limit} bytes"),
        )
    } else {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("cannot read request body: {error}"),
        )
    }
}

/// A body that is not the JSON the endpoint expects; serde's message names the problem.
pub fn parse_error(error: &serde_json::Error) -> ApiError {
    ApiError::new(
        ErrorKind::InvalidRequest,
        format!("invalid request body: {error}"),
    )
}

pub fn not_found(path: &str) -> ApiError {
    ApiError::new(ErrorKind::NotFound, format!("no route for {path}"))
}

pub fn method_not_allowed(method: &http::Method, path: &str) -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!("{method} is not allowed on {path}"),
    )
}

fn with_body(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    response
}
