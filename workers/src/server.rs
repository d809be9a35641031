//! The HTTP front: accepts connections (HTTP/1.1 and h2c), routes requests to
//! the endpoints, and drains gracefully on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use protocol::resume::STREAM_TOKENS;
use protocol::ApiError;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::api::{self, App};
use crate::respond::{self, Body};

const REQUEST_ID: &str = "x-request-id";

/// Serves until `shutdown` delivers a grace period (or its sender is dropped,
/// meaning no grace): then stops accepting, lets in-flight requests finish
/// within the grace period, and cuts off the rest.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    mut shutdown: oneshot::Receiver<Duration>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A timer lets hyper enforce its header-read timeout, so a client that
    // opens a connection and never finishes its headers cannot hold it forever.
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let grace = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Streaming tokens are small writes that must not wait for Nagle.
                let _ = stream.set_nodelay(true);
                let app = Arc::clone(&app);
                let service = service_fn(move |request| {
                    let app = Arc::clone(&app);
                    async move { Ok::<_, Infallible>(handle(&app, request).await) }
                });
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
                connections.spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            grace = &mut shutdown => break grace.unwrap_or(Duration::ZERO),
        }
    };
    drop(listener);
    tracing::info!(
        connections = connections.len(),
        grace_ms = grace.as_millis() as u64,
        "draining"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("drained"),
        () = tokio::time::sleep(grace) => tracing::warn!("drain grace expired; closing remaining connections"),
    }
    connections.shutdown().await;
    // The last reference to the engine goes here; its drop joins the engine
    // thread, which must not block the runtime.
    let _ = tokio::task::spawn_blocking(move || drop(app)).await;
}

/// One request: routed, answered, and its `x-request-id` echoed.
async fn handle(app: &App, request: Request<Incoming>) -> Response<Body> {
    let request_id = request.headers().get(REQUEST_ID).cloned();
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = request.uri().path(),
        request_id = request_id.as_ref().and_then(|v| v.to_str().ok()),
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    protocol::traces::continue_trace(&span, request.headers());
    async move {
        let mut response = route(app, request)
            .await
            .unwrap_or_else(|e| respond::error(&e));
        tracing::debug!(status = response.status().as_u16(), "responded");
        if let Some(id) = request_id {
            response.headers_mut().insert(REQUEST_ID, id);
        }
        response
    }
    .instrument(span)
    .await
}

async fn route(app: &App, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = request.uri().path().to_string();
    let ext = api::Extensions {
        stream_tokens: request.headers().contains_key(STREAM_TOKENS),
    };
    match (request.method(), path.as_str()) {
        (&Method::POST, "/v1/chat/completions") => {
            let body = read_body(request, app.config.max_body_bytes).await?;
            api::chat_completions(app, body, ext).await
        }
        (&Method::POST, "/v1/completions") => {
            let body = read_body(request, app.config.max_body_bytes).await?;
            api::completions(app, body, ext).await
        }
        (&Method::GET, "/v1/models") => Ok(api::models(app)),
        (&Method::GET, "/health") => Ok(api::health(app)),
        (method, "/v1/chat/completions" | "/v1/completions" | "/v1/models" | "/health") => {
            Err(respond::method_not_allowed(method, &path))
        }
        _ => Err(respond::not_found(&path)),
    }
}

async fn read_body(request: Request<Incoming>, limit: usize) -> Result<bytes::Bytes, ApiError> {
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(respond::body_error(e.as_ref(), limit)),
    }
}
