//! The OpenAI API. One function, `complete`, assembles the request path:
//! admit → parse → tokenize → candidates (with prefix overlap) → decide (WASM
//! or built-in policy) →
//! upstream with failover → relay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Response};
use hyper::body::Incoming;
use protocol::openai::ModelList;
use protocol::{ApiError, Bus, ErrorKind};

use crate::admit::Admit;
use crate::body::{self, Body};
use crate::config::Strategy;
use crate::failover::{self, UpstreamRequest};
use crate::live::{Live, Shared};
use crate::parse::{self, Endpoint};
use crate::stream::{Labels, Relay};
use crate::upstream::Upstream;
use crate::{candidates, decide, error, metrics, tokenize};

/// Everything the request path reads; shared by all connections.
pub struct Gateway {
    /// Config and workers in force; a request loads them once.
    pub live: Shared,
    pub upstream: Upstream,
    pub admit: Admit,
    /// Where workers' KV events and load arrive from, when configured.
    pub bus: Option<Bus>,
    pub load_stale: Duration,
    /// The etcd control plane's state, when one is configured.
    pub control: Option<Arc<crate::control::Control>>,
}

impl Gateway {
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Whether workers' events reach this gateway now.
    pub fn bus_up(&self) -> bool {
        self.bus.as_ref().is_some_and(Bus::is_connected)
    }
}

pub async fn handle(gw: Arc<Gateway>, req: http::Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let endpoint = match path {
        "/v1/chat/completions" => Some(Endpoint::Chat),
        "/v1/completions" => Some(Endpoint::Completion),
        _ => None,
    };
    match (req.method(), endpoint, path) {
        (&Method::POST, Some(endpoint), _) => {
            let mut labels = Labels::default();
            let response = complete(&gw, req, endpoint, &mut labels)
                .await
                .unwrap_or_else(|e| error::response(&e));
            metrics::request_done(&labels.model, &labels.pool, response.status().as_u16());
            response
        }
        (&Method::GET, None, "/v1/models") => body::json(
            200,
            serde_json::to_vec(&ModelList::new(gw.live().registry.models(), "llmgw"))
                .expect("serializes"),
        ),
        (_, Some(_), _) | (_, None, "/v1/models") => error::response(&ApiError::new(
            ErrorKind::MethodNotAllowed,
            format!("{} is not allowed on {path}", req.method()),
        )),
        _ => error::response(&ApiError::new(
            ErrorKind::NotFound,
            format!("no route for {path}"),
        )),
    }
}

async fn complete(
    gw: &Gateway,
    req: http::Request<Incoming>,
    endpoint: Endpoint,
    labels: &mut Labels,
) -> Result<Response<Body>, ApiError> {
    let started = Instant::now();
    let permit = gw.admit.try_admit()?;

    let (head, body) = req.into_parts();
    let declared_len = head
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let live = gw.live();
    let config = &*live.config;
    let bytes = parse::read_body(body, declared_len, config.listeners.max_body_bytes).await?;
    let parsed = parse::parse(endpoint, &bytes)?;
    let pool = live
        .registry
        .pool_for(&parsed.model)
        .ok_or_else(|| ApiError::model_not_found(&parsed.model))?;
    labels.model = parsed.model.clone();
    labels.pool = pool.name.clone();

    let prompt =
        tokenize::prompt_blocks_of(&pool.tokenizer, pool.block_size, parsed.prompt, bytes.len())
            .await?;
    let now = Instant::now();
    let routing = &config.routing;
    let mut candidates = candidates::gather(pool, &config.zone, now, gw.load_stale);
    pool.prefix.fill(
        routing.strategy,
        gw.bus_up(),
        &prompt.hashes,
        &mut candidates,
        now,
    );
    let overlaps: Vec<(String, u32)> = candidates
        .iter()
        .map(|c| (c.worker.id.clone(), c.overlap_blocks))
        .collect();
    let facts = decide::Facts {
        model: &parsed.model,
        stream: parsed.stream,
        prompt_tokens: prompt.tokens,
        prompt_blocks: prompt.hashes.len(),
        session_key: session_key(&head.headers, parsed.user.as_deref()),
        headers: &head.headers,
    };
    let order = decide::decide(config, pool, candidates, &facts)?;
    let order_first_id = order.first().map(|w| w.id.clone());
    // The approximate index learns at decision time, so requests sharing this
    // prefix that arrive during its prefill already follow it.
    let learns = matches!(routing.strategy, Strategy::Kv | Strategy::Approx);
    if let (true, Some(first)) = (learns, order.first()) {
        pool.prefix.record(&first.id, &prompt.hashes, now);
    }
    let overlap_of = |id: &str| overlaps.iter().find(|(w, _)| w == id).map_or(0, |o| o.1);
    let uncached_tokens = |id: &str| {
        prompt
            .tokens
            .saturating_sub(overlap_of(id) as usize * pool.block_size)
    };

    // Set by the request-id layer before this handler runs.
    let request_id = head
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let upstream_req = UpstreamRequest {
        path: endpoint.path(),
        body: bytes,
        request_id,
        stream: parsed.stream,
        uncached_tokens: &uncached_tokens,
    };
    let served = failover::send(&gw.upstream, &config.retry, order, &upstream_req).await?;

    let worker = served.in_flight.worker().clone();
    let overlap = overlap_of(&worker.id);
    tracing::info!(worker = %worker.id, pool = %pool.name, attempts = served.attempts,
        prompt_blocks = prompt.hashes.len(), overlap_blocks = overlap,
        status = served.response.status().as_u16(), "routed");
    metrics::prompt_blocks(&pool.name, prompt.hashes.len(), overlap);
    if learns && order_first_id.as_deref() != Some(worker.id.as_str()) {
        // Failed over: the prefix now lives where it was served.
        pool.prefix
            .record(&worker.id, &prompt.hashes, Instant::now());
    }
    let worker_id_header = config.listeners.worker_id_header;
    Ok(relay(
        served,
        worker_id_header,
        labels,
        parsed.stream,
        started,
        permit,
    ))
}

/// The worker's response on its way to the client: connection headers
/// dropped, the serving worker named, the body relayed frame by frame.
fn relay(
    served: failover::Served,
    worker_id_header: bool,
    labels: &Labels,
    stream: bool,
    started: Instant,
    permit: crate::admit::Permit,
) -> Response<Body> {
    let worker_id = served.in_flight.worker().id.clone();
    let (mut parts, upstream_body) = served.response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if worker_id_header {
        if let Ok(id) = http::HeaderValue::from_str(&worker_id) {
            parts.headers.insert("x-worker-id", id);
        }
    }
    let guards = (served.in_flight, permit);
    let body = Relay::new(upstream_body, served.first, labels, stream, started, guards);
    Response::from_parts(parts, http_body_util::BodyExt::boxed(body))
}

/// Keys sticky routing: the `x-session-id` header, else the request's `user`.
fn session_key(headers: &http::HeaderMap, user: Option<&str>) -> Option<String> {
    headers
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .or(user)
        .map(str::to_string)
}

/// Headers that describe one connection, not the message; hyper sets its own.
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
    ] {
        headers.remove(name);
    }
}
