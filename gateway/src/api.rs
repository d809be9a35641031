//! The OpenAI API. A completion goes `accept` (admit → read → parse → the
//! model's pool), then `route` (tokenize → candidates with their prefix
//! overlap → decide, by WASM or built-in policy → upstream with failover →
//! relay), each reading top-down.

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
use crate::parse::{self, Endpoint, Parsed, Prompt};
use crate::pools::Pool;
use crate::relay::{self, Labels, Relay};
use crate::tenancy::{self, Caller, Outcome, Tenancy, Ticket};
use crate::upstream::Upstream;
use crate::{candidates, decide, error, metrics, tokenize};

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
    let (labels, response) = match accept(gw, req, endpoint).await {
        Ok(accepted) => {
            let labels = accepted.labels();
            let response = route(gw, accepted, &labels, started).await;
            (labels, response)
        }
        Err(e) => (Labels::default(), error::response(&e)),
    };
    metrics::request_done(&labels.model, &labels.pool, response.status().as_u16());
    response
}

/// A request admitted, read, parsed and matched to its model's pool.
struct Accepted {
    permit: Permit,
    caller: Caller,
    headers: http::HeaderMap,
    body: Bytes,
    parsed: Parsed,
    /// Config and workers as they were on arrival, kept to the request's end.
    live: Arc<Live>,
    pool: Arc<Pool>,
    endpoint: Endpoint,
}

impl Accepted {
    fn labels(&self) -> Labels {
        Labels {
            model: self.parsed.model.clone(),
            pool: self.pool.name.clone(),
            metrics: self.pool.metrics.model(&self.parsed.model),
        }
    }
}

/// Admit → the caller's key → read the body → parse → find the model's
/// pool, if the key may use it.
async fn accept(
    gw: &Gateway,
    req: http::Request<Incoming>,
    endpoint: Endpoint,
) -> Result<Accepted, ApiError> {
    let permit = gw.admit.try_admit()?;
    let caller = gw.tenancy.authenticate(req.headers())?;
    let (head, body) = req.into_parts();
    let declared_len = head
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let live = gw.live();
    let body = parse::read_body(body, declared_len, live.config.listeners.max_body_bytes).await?;
    let parsed = parse::parse(endpoint, &body)?;
    gw.tenancy.may_use(&caller, &parsed.model)?;
    let pool = live
        .registry
        .pool_for(&parsed.model)
        .ok_or_else(|| ApiError::model_not_found(&parsed.model))?
        .clone();
    Ok(Accepted {
        permit,
        caller,
        headers: head.headers,
        body,
        parsed,
        live,
        pool,
        endpoint,
    })
}

/// Tokenize → the caller's limits → the pool's queue → send → relay. Every
/// answer from here on carries the caller's rate-limit headers, and its
/// ticket records what it used.
async fn route(
    gw: &Gateway,
    mut req: Accepted,
    labels: &Labels,
    started: Instant,
) -> Response<Body> {
    // The prompt goes to the tokenizer; the body forwarded is the client's bytes.
    let text = std::mem::replace(&mut req.parsed.prompt, Prompt::Chat(Vec::new()));
    let prompt = match tokenize::prompt_blocks_of(
        &req.pool.tokenizer,
        req.pool.block_size,
        text,
        req.parsed.cache_salt.clone(),
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
        // Set by the request-id layer before this handler runs.
        request_id: header(&req.headers, "x-request-id").to_string(),
        model: labels.model.clone(),
        pool: labels.pool.clone(),
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
        Ok((served, follow)) => respond(served, follow, labels, req, started, ticket),
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
    req: &Accepted,
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
    let request_id = header(headers, "x-request-id");
    // Followed to continue it elsewhere, and to count what it generates.
    let follow = parsed.stream && (config.retry.max_migrations > 0 || gw.tenancy.meters());
    let body_for = |_: &crate::worker::Worker| Some(body.clone());
    let upstream_req = UpstreamRequest {
        path: endpoint.path(),
        body: &body_for,
        request_id,
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
        request_id: request_id.to_string(),
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
    labels: &Labels,
    req: Accepted,
    started: Instant,
    ticket: Ticket,
) -> Response<Body> {
    let worker_id = served.in_flight.worker().id.clone();
    let mut parts = served.head;
    strip_hop_by_hop(&mut parts.headers);
    if req.live.config.listeners.worker_id_header || req.caller.is_admin() {
        if let Ok(id) = http::HeaderValue::from_str(&worker_id) {
            parts.headers.insert("x-worker-id", id);
        }
    }
    if let Some(headers) = ticket.headers() {
        headers.apply(&mut parts.headers);
    }
    let stall = req.live.config.retry.stream_stall;
    let body = Relay::new(
        (served.in_flight, served.first, served.rest),
        follow,
        labels,
        (req.parsed.stream, stall),
        started,
        (req.permit, ticket, parts.status.as_u16()),
    );
    Response::from_parts(parts, body.into_body())
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
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
