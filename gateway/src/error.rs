//! The one place where errors become HTTP responses for API clients, in the
//! OpenAI error shape with the matching status code.

use protocol::{ApiError, ErrorKind};

use crate::body::{self, Body};

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
