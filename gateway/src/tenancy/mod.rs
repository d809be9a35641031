//! The front door for many tenants: who a request is (`keys`, presented as
//! `Authorization: Bearer KEY` or `api-key: KEY`), what it may spend
//! (`limits`, shared between replicas by `share`), when it goes (`queue`),
//! and what it used (`usage`). A request takes a [`Ticket`] at admission;
//! the ticket rides with the answer and, when the answer ends, trues up the
//! token reservation, frees the queue slot and records the usage.

pub mod config;
pub mod keys;
pub mod limits;
mod queue;
mod share;
pub mod usage;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use protocol::{ApiError, Bus, ErrorKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::control::EtcdSnapshot;
use crate::metrics;
use crate::plugin::{PolicyCaller, PolicyPriority};
use config::{AdmissionConfig, AuthMode};
use keys::{Key, KeySet, KeysFile, Priority};
use limits::{Admitted, Limits, RateHeaders, Refused};
pub use queue::Slot;
use queue::{Arrival, Bounds, Queue};
use usage::{Record, Usage};

/// How often the keys file is checked for changes.
const KEYS_FILE_POLL: Duration = Duration::from_millis(250);

pub struct Tenancy {
    mode: AuthMode,
    keys: ArcSwap<KeySet>,
    limits: Arc<Limits>,
    usage: Usage,
    admission: AdmissionConfig,
    queues: Mutex<HashMap<String, Arc<Queue>>>,
}

/// Who sent a request: its key, or nobody when keys are off.
#[derive(Clone, Default)]
pub struct Caller {
    pub key: Option<Arc<Key>>,
}

impl Caller {
    pub fn tenant(&self) -> Option<&str> {
        self.key.as_ref().map(|k| k.record.tenant.as_str())
    }

    /// An admin key: sees topology headers such as `x-worker-id`.
    pub fn is_admin(&self) -> bool {
        self.key.as_ref().is_some_and(|k| k.record.admin)
    }

    /// As routing policies see it.
    pub fn for_policy(&self) -> PolicyCaller {
        PolicyCaller {
            tenant: self.tenant().map(str::to_string),
            priority: match self.priority() {
                Priority::High => PolicyPriority::High,
                Priority::Normal => PolicyPriority::Normal,
                Priority::Low => PolicyPriority::Low,
            },
        }
    }

    pub fn priority(&self) -> Priority {
        self.key
            .as_ref()
            .map_or(Priority::Normal, |k| k.record.priority)
    }
}

impl Tenancy {
    pub fn new(config: &crate::Config, mode: AuthMode, shared: bool) -> std::io::Result<Tenancy> {
        let keys = match (&config.auth.keys_file, mode) {
            (Some(path), AuthMode::Keys) => KeysFile::read(path)
                .map(KeySet::from_file)
                .map_err(std::io::Error::other)?,
            _ => KeySet::default(),
        };
        metrics::keys_loaded(keys.count());
        Ok(Tenancy {
            mode,
            keys: ArcSwap::from_pointee(keys),
            limits: Arc::new(Limits::new(shared, config.limits.replicas)),
            usage: Usage::new(config.usage.log.as_deref())?,
            admission: config.admission.clone(),
            queues: Mutex::default(),
        })
    }

    /// Whether answers are counted for someone: keys' limits or the usage log.
    pub fn meters(&self) -> bool {
        self.mode == AuthMode::Keys || self.usage.logs()
    }

    /// The key a request presents, or a 401.
    pub fn authenticate(&self, headers: &http::HeaderMap) -> Result<Caller, ApiError> {
        if self.mode == AuthMode::None {
            return Ok(Caller::default());
        }
        let refuse = |reason: &'static str, message: &str| {
            metrics::auth_failure(reason);
            ApiError::new(ErrorKind::InvalidApiKey, message)
        };
        let Some(secret) = presented(headers) else {
            return Err(refuse(
                "missing",
                "You didn't provide an API key. Send it as `Authorization: Bearer KEY` or `api-key: KEY`.",
            ));
        };
        let keys = self.keys.load();
        let Some(key) = keys.find(secret) else {
            return Err(refuse("unknown", "Incorrect API key provided."));
        };
        if key
            .record
            .expires_at
            .is_some_and(|at| at <= keys::unix_now())
        {
            return Err(refuse("expired", "The API key provided has expired."));
        }
        Ok(Caller {
            key: Some(key.clone()),
        })
    }

    /// Whether a request may see the admin surface (without keys: anyone
    /// who reaches the admin listener): 401 without a valid key, 403 with
    /// one that is not an admin's.
    pub fn admin(&self, headers: &http::HeaderMap) -> Result<(), ApiError> {
        if self.mode == AuthMode::None {
            return Ok(());
        }
        match self.authenticate(headers)?.key {
            Some(key) if key.record.admin => Ok(()),
            _ => Err(ApiError::new(
                ErrorKind::PermissionDenied,
                "the admin listener needs an admin API key (`gatewayctl key create --admin`)",
            )),
        }
    }

    /// A model outside the key's scope reads as one that does not exist.
    pub fn may_use(&self, caller: &Caller, model: &str) -> Result<(), ApiError> {
        match &caller.key {
            Some(key)
                if !key.record.models.is_empty()
                    && !key.record.models.iter().any(|m| m == model) =>
            {
                Err(ApiError::model_not_found(model))
            }
            _ => Ok(()),
        }
    }

    /// Takes a request and `tokens` from the caller's limits.
    pub fn charge(&self, caller: &Caller, tokens: u64) -> Result<Option<Admitted>, Box<Refused>> {
        let Some(key) = &caller.key else {
            return Ok(None);
        };
        self.limits
            .admit(key, tokens, Instant::now())
            .map(Some)
            .inspect_err(|_| {
                metrics::rate_limited(&key.record.tenant);
            })
    }

    /// A place among the requests `pool`'s workers hold, waiting for it
    /// when they are all busy; `None` when queueing is off or no worker routes.
    pub async fn enter(
        &self,
        pool: &str,
        routable: usize,
        caller: &Caller,
        tokens: u64,
    ) -> Result<Option<Slot>, ApiError> {
        let per_worker = self.admission.max_in_flight_per_worker as usize;
        if per_worker == 0 || routable == 0 {
            return Ok(None);
        }
        let queue = self
            .queues
            .lock()
            .expect("queues lock")
            .entry(pool.to_string())
            .or_insert_with(|| Queue::new(pool))
            .clone();
        let who = Arrival {
            tenant: caller.tenant().unwrap_or(""),
            priority: caller.priority(),
            tokens,
        };
        let bounds = Bounds {
            max_wait: self.admission.max_queue_wait,
            max_length: self.admission.max_queue_length,
        };
        queue
            .enter(routable * per_worker, who, bounds)
            .await
            .map(Some)
    }

    /// Follows the keys file until the task is aborted; a file that does
    /// not parse leaves the last good keys serving.
    pub fn watch_file(self: &Arc<Self>, path: PathBuf) -> JoinHandle<()> {
        let tenancy = Arc::clone(self);
        tokio::spawn(async move {
            // The inode too: a rewrite through a rename within one mtime
            // tick, of the same length (a rotated key), is still a change.
            let stamp = |p: &PathBuf| {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(p)
                    .ok()
                    .map(|m| (m.modified().ok(), m.len(), m.ino()))
            };
            let mut seen = stamp(&path);
            loop {
                tokio::time::sleep(KEYS_FILE_POLL).await;
                let now = stamp(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                match KeysFile::read(&path) {
                    Ok(file) => tenancy.install(KeySet::from_file(file), "file"),
                    Err(e) => {
                        metrics::keys_reload("refused");
                        tracing::error!(path = %path.display(), error = %e, "keys file refused; the last good keys keep serving");
                    }
                }
            }
        })
    }

    /// Follows the keys and tenants in etcd's snapshots until the task is aborted.
    pub fn follow_etcd(
        self: &Arc<Self>,
        prefix: &str,
        mut snapshots: watch::Receiver<Arc<EtcdSnapshot>>,
    ) -> JoinHandle<()> {
        let tenancy = Arc::clone(self);
        let layout = protocol::control::Keys::new(prefix);
        let (keys_at, tenants_at) = (layout.api_keys(), layout.tenants());
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let snapshot = snapshots.borrow_and_update().clone();
                let ours: Vec<_> = snapshot
                    .kvs
                    .range(keys_at.clone()..)
                    .take_while(|(k, _)| k.starts_with(&keys_at))
                    .chain(
                        snapshot
                            .kvs
                            .range(tenants_at.clone()..)
                            .take_while(|(k, _)| k.starts_with(&tenants_at)),
                    )
                    .map(|(k, (v, rev))| (k.clone(), v.clone(), *rev))
                    .collect();
                let revisions: Vec<_> = ours.iter().map(|(k, _, rev)| (k.clone(), *rev)).collect();
                if last.as_ref() != Some(&revisions) {
                    let kvs = ours.iter().map(|(k, v, _)| (k.as_str(), v.as_ref()));
                    let (set, bad) = KeySet::from_etcd(kvs, &keys_at, &tenants_at);
                    for problem in bad {
                        tracing::error!(%problem, "API key record refused");
                    }
                    tenancy.install(set, "etcd");
                    last = Some(revisions);
                }
                if snapshots.changed().await.is_err() {
                    return;
                }
            }
        })
    }

    fn install(&self, keys: KeySet, from: &str) {
        metrics::keys_loaded(keys.count());
        metrics::keys_reload("applied");
        tracing::info!(keys = keys.count(), from, "API keys in force");
        self.keys.store(Arc::new(keys));
    }

    /// Forgets idle rate-limit buckets every minute until the task is aborted.
    pub fn upkeep(self: &Arc<Self>) -> JoinHandle<()> {
        let tenancy = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                tenancy.limits.prune();
            }
        })
    }

    /// Exchanges what this replica admits with the others over `bus`.
    pub fn share(&self, bus: Bus, subject: String, every: Duration) -> JoinHandle<()> {
        tokio::spawn(share::run(bus, subject, self.limits.clone(), every))
    }
}

/// The secret a request presents, if any.
fn presented(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(auth) = headers.get(http::header::AUTHORIZATION) {
        let value = auth.to_str().ok()?;
        let (scheme, secret) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| secret.trim())
            .filter(|s| !s.is_empty());
    }
    headers
        .get("api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// What a request holds from admission to the end of its answer.
pub struct Ticket {
    pub tenancy: Arc<Tenancy>,
    pub caller: Caller,
    pub admitted: Option<Admitted>,
    pub slot: Option<Slot>,
    pub request_id: http::HeaderValue,
    pub model: Arc<str>,
    pub pool: Arc<str>,
    pub prompt_tokens: u64,
    /// The gateway's own estimate, for engines that do not report theirs.
    pub cached_tokens: u64,
    /// Settled already: a ticket dropped unsettled (its request cancelled
    /// before an answer) settles as used nothing.
    pub settled: bool,
}

/// How an answer ended, as far as accounting goes.
#[derive(Debug, Default)]
pub struct Outcome {
    pub status: u16,
    pub worker: Option<protocol::WorkerId>,
    /// What the engine reported, where it did: prompt, cached, completion.
    pub reported: Option<(u64, Option<u64>, u64)>,
    /// Completion tokens counted from the stream, where not reported.
    pub generated: u64,
    pub ttft: Option<Duration>,
    pub duration: Duration,
}

impl Ticket {
    /// The `x-ratelimit-*` headers for the answer.
    pub fn headers(&self) -> Option<&RateHeaders> {
        self.admitted.as_ref().map(|a| &a.headers)
    }

    /// Trues up the reservation, frees the slot, records the usage.
    pub fn finish(mut self, outcome: Outcome) {
        self.settle(outcome);
    }

    fn settle(&mut self, outcome: Outcome) {
        self.settled = true;
        self.slot = None;
        let (prompt, cached, completion) = match outcome.reported {
            Some((prompt, cached, completion)) => {
                (prompt, cached.unwrap_or(self.cached_tokens), completion)
            }
            None if outcome.status < 400 => {
                (self.prompt_tokens, self.cached_tokens, outcome.generated)
            }
            None => (0, 0, 0),
        };
        if let Some(admitted) = &self.admitted {
            self.tenancy.limits.settle(admitted, prompt + completion);
        }
        let key = self.caller.key.as_ref();
        if key.is_none() && !self.tenancy.usage.logs() {
            return; // nothing counts a request of no key but the log
        }
        let ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.tenancy.usage.record(Record {
            ts_ms,
            request_id: self.request_id.to_str().unwrap_or_default().to_string(),
            key: key.map(|k| k.record.id.clone()),
            tenant: key.map(|k| k.record.tenant.clone()),
            model: self.model.to_string(),
            pool: self.pool.to_string(),
            worker: outcome.worker.map(|w| w.to_string()),
            status: outcome.status,
            prompt_tokens: prompt,
            cached_tokens: cached,
            completion_tokens: completion,
            ttft_ms: outcome.ttft.map(|d| d.as_millis() as u64),
            duration_ms: outcome.duration.as_millis() as u64,
        });
    }
}

impl Drop for Ticket {
    /// A request cancelled before its answer (the client gone while it
    /// queued, the backstop timeout) gives its reservation back.
    fn drop(&mut self) {
        if !self.settled {
            self.settle(Outcome {
                status: 499,
                ..Outcome::default()
            });
        }
    }
}

/// The 429 for a request past its limits, with OpenAI's headers.
pub fn refused_response(refused: &Refused) -> http::Response<crate::body::Body> {
    let mut response = crate::error::response(&refused.error);
    let headers = response.headers_mut();
    refused.headers.apply(headers);
    let secs = refused.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    headers.insert(http::header::RETRY_AFTER, secs.into());
    headers.insert(
        "retry-after-ms",
        (refused.retry_after.as_millis() as u64).into(),
    );
    response
}
