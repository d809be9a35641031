//! The one place where errors become HTTP responses for API clients, in the
//! OpenAI error shape with the matching status code.

use protocol::{ApiError, ErrorKind};

use crate::body::{self, Body, BoxError};

pub fn response(error: &ApiError) -> http::Response<Body> {
    let mut resp = body::json(error.status(), error.to_json());
    if error.kind == ErrorKind::Overloaded || error.kind == ErrorKind::NoHealthyWorker {
        // Tells well-behaved clients (the openai SDK among them) when to come back.
        resp.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
    }
    resp
}

/// Errors raised by tower layers (shedding, timeouts) rather than by the handler.
pub fn from_layer(error: BoxError) -> ApiError {
    if error.is::<tower::timeout::error::Elapsed>() {
        ApiError::new(
            ErrorKind::Timeout,
            "the request timed out before a worker answered",
        )
    } else if let Ok(api) = error.downcast::<ApiError>() {
        *api
    } else {
        ApiError::new(ErrorKind::Internal, "internal error")
    }
}
