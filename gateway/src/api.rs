//! The OpenAI API. A completion goes `receive` (admit → the caller's key →
//! read), `accept` (parse → the model's pool), then `route` (tokenize →
//! candidates with their prefix overlap → decide, by WASM or built-in policy
//! → upstream with failover → relay), each reading top-down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Response};
use hyper::body::Incoming;
use protocol::openai::ModelList;
use protocol::{ApiError, Bus, ErrorKind};

use crate::admit::{Admit, Permit};
use crate::body::{self, Body};
use crate::failover::{self, Learn, Target, UpstreamRequest};
use crate::live::{Live, Shared};
use crate::metrics::ModelMetrics;
use crate::parse::{self, Endpoint, Parsed};
use crate::pools::Pool;
use crate::relay::{self, Relay};
use crate::tenancy::{self, Caller, Outcome, Tenancy, Ticket};
use crate::upstream::Upstream;
use crate::{candidates, context, decide, error, metrics, tokenize};

/// `/v1/models`' `owned_by` for every model the gateway routes.
const OWNED_BY: &str = "llmgw";

/// Everything the request path reads; shared by all connections.
pub struct Gateway {
    /// Config and workers in force; a request loads them once.
    pub live: Shared,
    pub upstream: Upstream,
    pub admit: Admit,
    /// Keys, limits, queues and usage.
    pub tenancy: Arc<Tenancy>,
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
        (&Method::POST, Some(endpoint), _) => complete(&gw, req, endpoint).await,
        (&Method::GET, None, "/v1/models") => models(&gw, req.headers()),
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

/// The models the caller may use.
fn models(gw: &Gateway, headers: &http::HeaderMap) -> Response<Body> {
    let caller = match gw.tenancy.authenticate(headers) {
        Ok(caller) => caller,
        Err(e) => return error::response(&e),
    };
    let live = gw.live();
    let mut allowed = live.registry.models();
    allowed.retain(|m| gw.tenancy.may_use(&caller, m).is_ok());
    let list = ModelList::new(allowed, OWNED_BY);
    body::json(200, serde_json::to_vec(&list).expect("serializes"))
}

/// A completion, counted once under its model and pool (empty until known).
async fn complete(
    gw: &Gateway,
    req: http::Request<Incoming>,
    endpoint: Endpoint,
) -> Response<Body> {
    let started = Instant::now();
    let refused = |e: ApiError| {
        metrics::request_unplaced(e.status());
        error::response(&e)
    };
    let received = match receive(gw, req).await {
        Ok(received) => received,
        Err(e) => return refused(e),
    };
    // The model and prompt are read in place from this handle on the body;
    // the request keeps its own, to forward.
    let body = received.body.clone();
    let accepted = match accept(gw, received, &body, endpoint) {
        Ok(accepted) => accepted,
        Err(e) => return refused(e),
    };
    let counted = Arc::clone(&accepted.metrics);
    let response = route(gw, accepted, started).await;
    counted.request_done(response.status().as_u16());
    response
}

/// A request admitted, its caller known and its body read.
struct Received {
    permit: Permit,
    caller: Caller,
    headers: http::HeaderMap,
    body: Bytes,
    /// Config and workers as they were on arrival, kept to the request's end.
    live: Arc<Live>,
}

/// A request parsed and matched to its model's pool.
struct Accepted<'a> {
    permit: Permit,
    caller: Caller,
    headers: http::HeaderMap,
    body: Bytes,
    parsed: Parsed<'a>,
    live: Arc<Live>,
    pool: Arc<Pool>,
    /// The model's metrics in its pool.
    metrics: Arc<ModelMetrics>,
    endpoint: Endpoint,
}

/// Admit → the caller's key → read the body.
async fn receive(gw: &Gateway, req: http::Request<Incoming>) -> Result<Received, ApiError> {
    let permit = gw.admit.try_admit()?;
    let caller = gw.tenancy.authenticate(req.headers())?;
    let (head, body) = req.into_parts();
    let declared_len = head
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let live = gw.live();
    let body = parse::read_body(body, declared_len, live.config.listeners.max_body_bytes).await?;
    Ok(Received {
        permit,
        caller,
        headers: head.headers,
        body,
        live,
    })
}

/// Parse `body` (the received body's bytes) → find the model's pool, if
/// the key may use it.
fn accept<'a>(
    gw: &Gateway,
    received: Received,
    body: &'a Bytes,
    endpoint: Endpoint,
) -> Result<Accepted<'a>, ApiError> {
    let parsed = parse::parse(endpoint, body)?;
    gw.tenancy.may_use(&received.caller, &parsed.model)?;
    let live = received.live;
    let pool = live
        .registry
        .pool_for(&parsed.model)
        .ok_or_else(|| ApiError::model_not_found(&parsed.model))?
        .clone();
    let metrics = pool.metrics.model(&parsed.model);
    Ok(Accepted {
        permit: received.permit,
        caller: received.caller,
        headers: received.headers,
        body: received.body,
        parsed,
        live,
        pool,
        metrics,
        endpoint,
    })
}

/// Tokenize → the caller's limits → the pool's queue → send → relay. Every
/// answer from here on carries the caller's rate-limit headers, and its
/// ticket records what it used.
async fn route(gw: &Gateway, req: Accepted<'_>, started: Instant) -> Response<Body> {
    let prompt = match tokenize::prompt_blocks_of(
        &req.pool.tokenizer,
        req.pool.block_size,
        &req.parsed.prompt,
        req.parsed.cache_salt.as_deref(),
        req.body.len(),
    )
    .await
    {
        Ok(prompt) => prompt,
        Err(e) => return error::response(&e),
    };
    let mut ticket = Ticket {
        tenancy: gw.tenancy.clone(),
        caller: req.caller.clone(),
        admitted: None,
        slot: None,
        request_id: request_id(&req.headers),
        model: Arc::clone(&req.metrics.model),
        pool: Arc::clone(&req.metrics.pool),
        prompt_tokens: prompt.tokens as u64,
        cached_tokens: 0,
        settled: false,
    };
    let unsaid = req.live.config.limits.reserve_completion_tokens * u64::from(req.parsed.choices);
    let completion = req.parsed.max_tokens.unwrap_or(unsaid);
    let reserve = prompt.tokens as u64 + completion;
    match gw.tenancy.charge(&req.caller, reserve) {
        Ok(admitted) => ticket.admitted = admitted,
        Err(refused) => {
            ticket.finish(Outcome {
                status: 429,
                duration: started.elapsed(),
                ..Outcome::default()
            });
            return tenancy::refused_response(&refused);
        }
    }
    match send(gw, &req, &prompt, &mut ticket, reserve).await {
        Ok((served, follow)) => respond(served, follow, req, started, ticket),
        Err(e) => {
            let mut response = error::response(&e);
            if let Some(headers) = ticket.headers() {
                headers.apply(response.headers_mut());
            }
            ticket.finish(Outcome {
                status: e.status(),
                duration: started.elapsed(),
                ..Outcome::default()
            });
            response
        }
    }
}

/// The pool's queue → candidates with their prefix overlap → policy →
/// upstream with failover; what a stream needs to go on elsewhere.
async fn send(
    gw: &Gateway,
    req: &Accepted<'_>,
    prompt: &tokenize::PromptBlocks,
    ticket: &mut Ticket,
    reserve: u64,
) -> Result<(failover::Served, Option<relay::Continue>), ApiError> {
    let Accepted {
        headers,
        body,
        parsed,
        live,
        pool,
        endpoint,
        caller,
        ..
    } = req;
    let config = &*live.config;
    let strategy = config.routing.strategy;
    let routable = pool
        .workers
        .iter()
        .filter(|w| w.routable(Instant::now()))
        .count();
    ticket.slot = gw
        .tenancy
        .enter(&pool.name, routable, caller, reserve)
        .await?;

    let now = Instant::now();
    let cached = pool
        .prefix
        .cached(strategy, gw.bus_up(), &prompt.hashes, &pool.workers, now);
    let candidates = candidates::gather(pool, &cached, &config.zone, now, gw.load_stale);

    let facts = decide::Facts {
        model: &parsed.model,
        stream: parsed.stream,
        prompt_tokens: prompt.tokens,
        prompt_blocks: prompt.hashes.len(),
        session_key: session_key(headers, parsed.user.as_deref()),
        headers,
        caller: caller.for_policy(),
    };
    let order = decide::decide(config, pool, candidates, &facts, &mut rand::rng())?;

    let mut targets = order
        .into_iter()
        .map(|c| Target {
            uncached_tokens: prompt
                .tokens
                .saturating_sub(c.overlap_blocks as usize * pool.block_size),
            overlap_blocks: c.overlap_blocks,
            worker: c.worker,
        })
        .collect::<Vec<_>>()
        .into_iter();
    let id = request_id(headers);
    // Followed to continue it elsewhere, and to count what it generates.
    let follow = parsed.stream && (config.retry.max_migrations > 0 || gw.tenancy.meters());
    let body_for = |_: &crate::worker::Worker| Some(body.clone());
    let upstream_req = UpstreamRequest {
        endpoint: *endpoint,
        body: &body_for,
        request_id: &id,
        stream: parsed.stream,
        stream_tokens: follow,
        incoming: headers,
        credential: pool.credential.as_ref(),
        prefix: Learn {
            index: &pool.prefix,
            strategy,
            hashes: &prompt.hashes,
        },
    };
    let served = failover::send(&gw.upstream, &config.retry, &mut targets, &upstream_req).await?;

    let worker = served.in_flight.worker();
    tracing::info!(worker = %worker.id, pool = %pool.name, attempts = served.attempts,
        prompt_blocks = prompt.hashes.len(), overlap_blocks = served.overlap_blocks,
        status = served.head.status.as_u16(), "routed");
    pool.metrics
        .prompt_blocks(prompt.hashes.len(), served.overlap_blocks);
    ticket.cached_tokens =
        (served.overlap_blocks as usize * pool.block_size).min(prompt.tokens) as u64;
    let follow = (follow && served.head.status.is_success()).then(|| relay::Continue {
        upstream: gw.upstream.clone(),
        remaining: targets,
        body: body.clone(),
        endpoint: *endpoint,
        choices: parsed.choices,
        request_id: id,
        trace: protocol::traces::headers_for(&tracing::Span::current(), headers),
        hashes: prompt.hashes.clone(),
        pool: Arc::clone(pool),
        live: Arc::clone(live),
    });
    Ok((served, follow))
}

/// The worker's response on its way to the client: connection headers
/// dropped, the caller's rate-limit headers added, the serving worker
/// named where allowed, the body relayed frame by frame.
fn respond(
    served: failover::Served,
    follow: Option<relay::Continue>,
    req: Accepted<'_>,
    started: Instant,
    ticket: Ticket,
) -> Response<Body> {
    let mut parts = served.head;
    strip_hop_by_hop(&mut parts.headers);
    if req.live.config.listeners.worker_id_header || req.caller.is_admin() {
        if let Some(id) = &served.in_flight.worker().id_header {
            parts.headers.insert("x-worker-id", id.clone());
        }
    }
    if let Some(headers) = ticket.headers() {
        headers.apply(&mut parts.headers);
    }
    let stall = req.live.config.retry.stream_stall;
    let body = Relay::new(
        (served.in_flight, served.first, served.rest),
        follow,
        &req.metrics,
        (req.parsed.stream, stall),
        started,
        (req.permit, ticket, parts.status.as_u16()),
    );
    Response::from_parts(parts, body.into_body())
}

/// Set by `context` before the handler runs.
fn request_id(headers: &http::HeaderMap) -> http::HeaderValue {
    headers
        .get(context::REQUEST_ID)
        .cloned()
        .unwrap_or_else(|| http::HeaderValue::from_static(""))
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
