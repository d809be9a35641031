//! What every API request crosses before `api::handle`: its id (the client's
//! `x-request-id`, else a new UUID), echoed on the answer; the span its logs
//! carry; and the backstop that bounds it. Written out rather than stacked
//! as tower layers: those wrap every answer's body and box, format and
//! store per request what this does once.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::header::HeaderValue;
use http::{HeaderName, Request, Response};
use protocol::{ApiError, ErrorKind};
use tracing::{Instrument, Span};

use crate::body::Body;
use crate::{error, metrics};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Runs `handle` on `req` within the request's context. The failover loop
/// owns the real deadline; `backstop` only catches a handler stuck past it
/// (a client trickling its body, say).
pub async fn within<B, F, Fut>(
    mut req: Request<B>,
    peer: SocketAddr,
    backstop: Duration,
    handle: F,
) -> Response<Body>
where
    F: FnOnce(Request<B>) -> Fut,
    Fut: Future<Output = Response<Body>>,
{
    let id = match req.headers().get(REQUEST_ID) {
        Some(id) => id.clone(),
        None => {
            let id = new_id();
            req.headers_mut().insert(REQUEST_ID, id.clone());
            id
        }
    };
    let span = span(&req, &id, peer);
    let handled = tokio::time::timeout(backstop, handle(req).instrument(span)).await;
    let mut response = handled.unwrap_or_else(|_| {
        // The handler, which would have counted it under its pool, is gone.
        metrics::request_unplaced(504);
        error::response(&ApiError::new(
            ErrorKind::Timeout,
            "the request timed out before a worker answered",
        ))
    });
    // The gateway's id wins over one a worker may have answered with: it
    // is the one the client and the gateway's logs know.
    response.headers_mut().insert(REQUEST_ID, id);
    response
}

/// A new UUID, in one allocation its clones share (a header value made
/// from a string allocates again at its first clone).
fn new_id() -> HeaderValue {
    let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
        .expect("a UUID is a valid header value")
}

/// The request's span: method, path, id, and the client (behind a load
/// balancer the peer is the balancer; the first forwarded address is the
/// client), continuing the caller's trace.
fn span<B>(req: &Request<B>, id: &HeaderValue, peer: SocketAddr) -> Span {
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim);
    let ip = peer.ip();
    let client: &dyn std::fmt::Display = match &forwarded {
        Some(forwarded) => forwarded,
        None => &ip,
    };
    let client = tracing::field::display(client);
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path(),
        request_id = id.to_str().unwrap_or_default(), client,
        trace_id = tracing::field::Empty, span_id = tracing::field::Empty);
    protocol::traces::continue_trace(&span, req.headers());
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9);

    /// Answers with the request id the handler saw, as the body.
    async fn echo(req: Request<()>) -> Response<Body> {
        let id = req.headers()[REQUEST_ID].as_bytes().to_vec();
        crate::body::json(200, id)
    }

    async fn body_of(response: Response<Body>) -> Vec<u8> {
        use http_body_util::BodyExt;
        let body = response.into_body().collect().await.unwrap();
        body.to_bytes().to_vec()
    }

    #[tokio::test]
    async fn the_clients_request_id_is_kept_and_echoed() {
        let req = Request::builder()
            .header(REQUEST_ID, "req-7")
            .body(())
            .unwrap();
        let response = within(req, PEER, Duration::from_secs(5), echo).await;
        assert_eq!(response.headers()[REQUEST_ID], "req-7");
        assert_eq!(body_of(response).await, b"req-7");
    }

    #[tokio::test]
    async fn a_request_without_an_id_gets_one() {
        let response = within(Request::new(()), PEER, Duration::from_secs(5), echo).await;
        let id = response.headers()[REQUEST_ID].clone();
        assert!(uuid::Uuid::parse_str(id.to_str().unwrap()).is_ok());
        assert_eq!(body_of(response).await, id.as_bytes());
    }

    #[tokio::test]
    async fn a_stuck_handler_meets_the_backstop() {
        let stuck = |_: Request<()>| std::future::pending::<Response<Body>>();
        let req = Request::builder()
            .header(REQUEST_ID, "req-8")
            .body(())
            .unwrap();
        let response = within(req, PEER, Duration::from_millis(20), stuck).await;
        assert_eq!(response.status(), 504);
        assert_eq!(response.headers()[REQUEST_ID], "req-8");
        let error: serde_json::Value = serde_json::from_slice(&body_of(response).await).unwrap();
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("timed out"),
            "{error}"
        );
    }

    #[test]
    fn request_ids_are_uuids() {
        let id = new_id();
        let text = id.to_str().unwrap();
        assert_eq!(uuid::Uuid::parse_str(text).unwrap().get_version_num(), 4);
        assert_ne!(new_id(), id);
    }
}
