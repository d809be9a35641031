//! Requests and tokens per minute, per key and per tenant, as token buckets:
//! each holds up to a minute's budget and refills continuously, so
//! `remaining` and `reset` in OpenAI's headers are exact. A request's
//! tokens are its prompt (the gateway's own count) plus its `max_tokens`,
//! reserved at admission; when the answer ends the bucket gets back what
//! was reserved and not used (or pays what was used beyond it).
//!
//! Replicas share one budget by exchanging what they admitted (`share`):
//! a bucket is debited by this replica at once and by the others when their
//! report arrives, so the budget can be overshot by at most what the other
//! replicas admit within one exchange interval.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use protocol::{ApiError, ErrorKind};
use serde::{Deserialize, Serialize};

use super::keys::Key;

/// Buckets not touched for this long, and full again, are forgotten.
const IDLE: Duration = Duration::from_secs(120);

/// One bucket's charge, as replicas exchange it: its scope, its limit per
/// minute, and what was taken (negative: given back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spent(pub String, pub u64, pub f64);

#[derive(Debug)]
struct Bucket {
    /// Per minute, before this replica's share.
    limit: u64,
    level: f64,
    /// When `level` was last refilled.
    at: Instant,
    /// When anything was last taken from it, here or by another replica.
    used: Instant,
}

impl Bucket {
    fn new(limit: u64, share: f64, now: Instant) -> Bucket {
        let mut bucket = Bucket {
            limit,
            level: 0.0,
            at: now,
            used: now,
        };
        bucket.level = bucket.capacity(share);
        bucket
    }

    /// A replica's share of the limit, never under one: a limit smaller than
    /// the replicas sharing it still lets a request through now and then.
    fn capacity(&self, share: f64) -> f64 {
        (self.limit as f64 * share).max(1.0)
    }

    fn refill(&mut self, share: f64, now: Instant) {
        let per_sec = self.capacity(share) / 60.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * per_sec).min(self.capacity(share));
        self.at = now;
    }

    /// Until it holds `amount` again (at most a minute: a full bucket).
    fn until(&self, amount: f64, share: f64) -> Duration {
        let per_sec = self.capacity(share) / 60.0;
        let missing = (amount.min(self.capacity(share)) - self.level).max(0.0);
        Duration::try_from_secs_f64(missing / per_sec).unwrap_or(Duration::from_secs(60))
    }
}

/// One limit as OpenAI's headers state it.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Duration,
}

/// The `x-ratelimit-*` headers of one answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateHeaders {
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
}

impl RateHeaders {
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for (unit, window) in [("requests", &self.requests), ("tokens", &self.tokens)] {
            let Some(w) = window else { continue };
            for (name, value) in [
                ("limit", w.limit.to_string()),
                ("remaining", w.remaining.to_string()),
                ("reset", format_reset(w.reset)),
            ] {
                let name = http::HeaderName::try_from(format!("x-ratelimit-{name}-{unit}"))
                    .expect("a valid header name");
                headers.insert(name, value.parse().expect("digits and letters"));
            }
        }
    }
}

/// A request admitted against its limits: what to settle when it ends.
#[derive(Debug)]
pub struct Admitted {
    token_scopes: Vec<(String, u64)>,
    pub reserved: u64,
    pub headers: RateHeaders,
}

/// A request turned away: the error, its headers, and when to come back.
#[derive(Debug)]
pub struct Refused {
    pub error: ApiError,
    pub headers: RateHeaders,
    pub retry_after: Duration,
}

#[derive(Debug)]
pub struct Limits {
    buckets: Mutex<HashMap<String, Bucket>>,
    /// What this replica took since its last report to the others.
    pending: Mutex<HashMap<String, (u64, f64)>>,
    /// The part of each limit this replica enforces alone.
    share: f64,
    /// Whether anyone reads `pending`: only with replicas to tell.
    shared: bool,
}

impl Limits {
    /// `share`: 1 when replicas exchange what they admit (`shared`), else
    /// this replica's part of each budget.
    pub fn new(shared: bool, replicas: u32) -> Limits {
        Limits {
            buckets: Mutex::default(),
            pending: Mutex::default(),
            share: if shared {
                1.0
            } else {
                1.0 / replicas.max(1) as f64
            },
            shared,
        }
    }

    /// Takes one request and `tokens` from every limit of `key` and its
    /// tenant, or none when any is short.
    pub fn admit(&self, key: &Key, tokens: u64, now: Instant) -> Result<Admitted, Box<Refused>> {
        let record = &key.record;
        let tenant = key.tenant.as_ref();
        let scope = |kind: &str, name: &str, unit: &str| format!("{kind}/{name}/{unit}");
        let requests: Vec<(String, u64)> = [
            record
                .rpm
                .map(|l| (scope("key", &record.id, "requests"), l)),
            tenant
                .and_then(|t| t.rpm)
                .map(|l| (scope("tenant", &record.tenant, "requests"), l)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let token_scopes: Vec<(String, u64)> = [
            record.tpm.map(|l| (scope("key", &record.id, "tokens"), l)),
            tenant
                .and_then(|t| t.tpm)
                .map(|l| (scope("tenant", &record.tenant, "tokens"), l)),
        ]
        .into_iter()
        .flatten()
        .collect();
        if requests.is_empty() && token_scopes.is_empty() {
            return Ok(Admitted {
                token_scopes,
                reserved: tokens,
                headers: RateHeaders::default(),
            });
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let share = self.share;
        for (name, limit) in requests.iter().chain(&token_scopes) {
            let bucket = buckets
                .entry(name.clone())
                .or_insert_with(|| Bucket::new(*limit, share, now));
            if bucket.limit != *limit {
                // The key's limit changed: the new one holds from now.
                bucket.limit = *limit;
            }
            bucket.refill(share, now);
        }
        let short = |scopes: &[(String, u64)], amount: f64| {
            scopes
                .iter()
                .filter(|(name, _)| buckets[name].level < amount)
                .map(|(name, _)| buckets[name].until(amount, share))
                .max()
        };
        let too_large = token_scopes
            .iter()
            .map(|(name, _)| buckets[name].capacity(share))
            .find(|capacity| tokens as f64 > *capacity);
        let wait = short(&requests, 1.0).max(short(&token_scopes, tokens as f64));
        if let Some(limit) = too_large {
            let headers = window_headers(&buckets, &requests, &token_scopes, share);
            return Err(Box::new(Refused {
                error: ApiError::new(
                    ErrorKind::RateLimited,
                    format!(
                        "Request too large: it needs {tokens} tokens (prompt and max_tokens) and \
                         the limit is {limit:.0} tokens per minute"
                    ),
                ),
                headers,
                retry_after: Duration::from_secs(60),
            }));
        }
        if let Some(wait) = wait {
            let headers = window_headers(&buckets, &requests, &token_scopes, share);
            let (what, limit) = match (&headers.requests, &headers.tokens) {
                (Some(r), _) if r.remaining == 0 => ("requests", r.limit),
                (_, Some(t)) => ("tokens", t.limit),
                (Some(r), None) => ("requests", r.limit),
                (None, None) => unreachable!("a short bucket has a window"),
            };
            return Err(Box::new(Refused {
                error: ApiError::new(
                    ErrorKind::RateLimited,
                    format!(
                        "Rate limit reached: {limit} {what} per minute. Please try again in {}.",
                        format_reset(wait)
                    ),
                ),
                headers,
                retry_after: wait,
            }));
        }
        let mut taken = Vec::with_capacity(requests.len() + token_scopes.len());
        for name in requests.iter().chain(&token_scopes).map(|(name, _)| name) {
            buckets.get_mut(name).expect("made above").used = now;
        }
        for (name, limit) in &requests {
            buckets.get_mut(name).expect("made above").level -= 1.0;
            taken.push(Spent(name.clone(), *limit, 1.0));
        }
        for (name, limit) in &token_scopes {
            buckets.get_mut(name).expect("made above").level -= tokens as f64;
            taken.push(Spent(name.clone(), *limit, tokens as f64));
        }
        let headers = window_headers(&buckets, &requests, &token_scopes, share);
        drop(buckets);
        self.note(taken);
        Ok(Admitted {
            token_scopes,
            reserved: tokens,
            headers,
        })
    }

    /// The request used `used` tokens in all: the reservation is trued up.
    pub fn settle(&self, admitted: &Admitted, used: u64) {
        let diff = used as f64 - admitted.reserved as f64;
        if admitted.token_scopes.is_empty() || diff == 0.0 {
            return;
        }
        let spent = admitted
            .token_scopes
            .iter()
            .map(|(name, limit)| Spent(name.clone(), *limit, diff))
            .collect::<Vec<_>>();
        self.take(&spent, Instant::now());
        self.note(spent);
    }

    /// Another replica's report.
    pub fn take_remote(&self, spent: &[Spent]) {
        self.take(spent, Instant::now());
    }

    fn take(&self, spent: &[Spent], now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        for Spent(name, limit, amount) in spent {
            let bucket = buckets
                .entry(name.clone())
                .or_insert_with(|| Bucket::new(*limit, self.share, now));
            bucket.refill(self.share, now);
            bucket.level = (bucket.level - amount).min(bucket.capacity(self.share));
            bucket.used = now;
        }
    }

    fn note(&self, spent: Vec<Spent>) {
        if !self.shared {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for Spent(name, limit, amount) in spent {
            let entry = pending.entry(name).or_insert((limit, 0.0));
            *entry = (limit, entry.1 + amount);
        }
    }

    /// Forgets buckets nobody took from for a while that are full again:
    /// keys revoked or idle cost no memory.
    pub fn prune(&self) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        buckets.retain(|_, b| {
            let idle = now.duration_since(b.used) >= IDLE;
            b.refill(self.share, now);
            !idle || b.level < b.capacity(self.share)
        });
    }

    /// What this replica took since the last call, for the others.
    pub fn drain_pending(&self) -> Vec<Spent> {
        self.pending
            .lock()
            .expect("limits lock")
            .drain()
            .filter(|(_, (_, amount))| *amount != 0.0)
            .map(|(name, (limit, amount))| Spent(name, limit, amount))
            .collect()
    }
}

/// Each unit's window: the scope with the least left.
fn window_headers(
    buckets: &HashMap<String, Bucket>,
    requests: &[(String, u64)],
    tokens: &[(String, u64)],
    share: f64,
) -> RateHeaders {
    let window = |scopes: &[(String, u64)]| {
        scopes
            .iter()
            .map(|(name, _)| {
                let b = &buckets[name];
                Window {
                    limit: b.capacity(share).floor() as u64,
                    remaining: b.level.max(0.0).floor() as u64,
                    reset: b.until(f64::INFINITY, share),
                }
            })
            .min_by_key(|w| w.remaining)
    };
    RateHeaders {
        requests: window(requests),
        tokens: window(tokens),
    }
}

/// As OpenAI writes durations in its headers: `20ms`, `1.5s`, `6m0s`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenancy::keys::{KeyRecord, TenantRecord};

    fn key(rpm: Option<u64>, tpm: Option<u64>, tenant: Option<TenantRecord>) -> Key {
        let (mut record, _) = KeyRecord::generate("acme");
        record.rpm = rpm;
        record.tpm = tpm;
        Key { record, tenant }
    }

    #[test]
    fn requests_run_out_and_refill() {
        let limits = Limits::new(false, 1);
        let key = key(Some(60), None, None);
        let t0 = Instant::now();
        for left in (0..60).rev() {
            let ok = limits.admit(&key, 0, t0).unwrap();
            let w = ok.headers.requests.unwrap();
            assert_eq!((w.limit, w.remaining), (60, left));
            assert!(ok.headers.tokens.is_none());
        }
        let refused = limits.admit(&key, 0, t0).unwrap_err();
        assert_eq!(refused.error.kind, ErrorKind::RateLimited);
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert_eq!(
            refused.headers.requests.unwrap().reset,
            Duration::from_secs(60)
        );
        // One per second comes back.
        assert!(limits.admit(&key, 0, t0 + Duration::from_secs(1)).is_ok());
        assert!(limits.admit(&key, 0, t0 + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn tokens_are_reserved_then_trued_up() {
        let limits = Limits::new(false, 1);
        let key = key(None, Some(1000), None);
        let t0 = Instant::now();
        let ok = limits.admit(&key, 600, t0).unwrap();
        assert_eq!(ok.headers.tokens.as_ref().unwrap().remaining, 400);
        let refused = limits.admit(&key, 600, t0).unwrap_err();
        assert!(
            refused.error.message.contains("1000 tokens per minute"),
            "{}",
            refused.error.message
        );
        // Only 100 of the 600 were used.
        limits.settle(&ok, 100);
        assert!(limits.admit(&key, 600, Instant::now()).is_ok());
        let huge = limits.admit(&key, 5000, Instant::now()).unwrap_err();
        assert!(huge.error.message.contains("too large"));
    }

    #[test]
    fn the_tenant_limit_binds_all_its_keys() {
        let tenant = TenantRecord {
            rpm: Some(2),
            tpm: None,
        };
        let limits = Limits::new(false, 1);
        let (a, b) = (
            key(None, None, Some(tenant.clone())),
            key(Some(100), None, Some(tenant)),
        );
        let mut b = b;
        b.record.tenant = a.record.tenant.clone();
        let t0 = Instant::now();
        assert!(limits.admit(&a, 0, t0).is_ok());
        let ok = limits.admit(&b, 0, t0).unwrap();
        // The header names the tightest of the key's and the tenant's limits.
        assert_eq!(ok.headers.requests.unwrap().limit, 2);
        assert!(limits.admit(&b, 0, t0).is_err());
    }

    #[test]
    fn without_exchange_each_replica_enforces_its_share() {
        let limits = Limits::new(false, 4);
        let key = key(Some(40), None, None);
        let t0 = Instant::now();
        for _ in 0..10 {
            limits.admit(&key, 0, t0).unwrap();
        }
        assert!(limits.admit(&key, 0, t0).is_err());
    }

    #[test]
    fn a_limit_under_the_replicas_still_lets_some_through() {
        let limits = Limits::new(false, 4);
        let key = key(Some(2), None, None);
        let t0 = Instant::now();
        assert!(limits.admit(&key, 0, t0).is_ok());
        let refused = limits.admit(&key, 0, t0).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(60));
    }

    #[test]
    fn idle_full_buckets_are_forgotten() {
        let limits = Limits::new(false, 1);
        limits
            .admit(&key(Some(60), None, None), 0, Instant::now())
            .unwrap();
        limits.prune();
        assert_eq!(limits.buckets.lock().unwrap().len(), 1, "used just now");
        for bucket in limits.buckets.lock().unwrap().values_mut() {
            bucket.used -= IDLE;
            bucket.at -= IDLE;
        }
        limits.prune();
        assert!(limits.buckets.lock().unwrap().is_empty());
    }

    #[test]
    fn other_replicas_spending_counts_here() {
        let (here, there) = (Limits::new(true, 1), Limits::new(true, 1));
        let key = key(None, Some(100), None);
        let t0 = Instant::now();
        there.admit(&key, 80, t0).unwrap();
        let report = there.drain_pending();
        assert_eq!(report.len(), 1);
        here.take_remote(&report);
        assert!(here.admit(&key, 30, Instant::now()).is_err());
        assert!(here.admit(&key, 15, Instant::now()).is_ok());
        assert!(there.drain_pending().is_empty());
    }

    #[test]
    fn resets_read_as_openai_writes_them() {
        assert_eq!(format_reset(Duration::from_millis(20)), "20ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(2)), "2s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }
}
