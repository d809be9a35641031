//! One worker as routing sees it: its address, zone and labels, what this
//! gateway has in flight there, its last load report, and its health (the
//! pure state machines of `health`, behind locks shared by the request path,
//! the probes and `/status`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Uri;
use protocol::{LoadReport, WorkerId};

use crate::canary::Canary;
use crate::config::BreakerConfig;
use crate::engine::Engine;
use crate::health::{Breaker, ProbeState};
use crate::parse::Endpoint;

pub struct Worker {
    pub id: WorkerId,
    pub pool: String,
    /// Base URL, no path.
    pub url: Uri,
    /// The completion endpoints on `url`: chat's, then text's.
    endpoints: [Uri; 2],
    /// Its id as the `x-worker-id` header of the answers it serves.
    pub id_header: Option<http::HeaderValue>,
    pub zone: String,
    pub labels: BTreeMap<String, String>,
    pub engine: Engine,
    in_flight: AtomicU32,
    in_flight_gauge: metrics::Gauge,
    /// Prompt tokens this gateway sent the worker to prefill that have not
    /// produced a first byte yet: known at once, unlike the worker's report.
    pending_prefill: AtomicUsize,
    pub probe: Mutex<ProbeState>,
    pub breaker: Mutex<Breaker>,
    /// The worker's last own load report (from probes or the bus), and when it came.
    reported_load: Mutex<Option<(LoadReport, Instant)>>,
    /// The block size the worker says it hashes with, once it said so.
    pub reported_block_size: Mutex<Option<usize>>,
    /// Why the last probe failed though the server answered (it serves
    /// another model, say), for `/status`.
    pub problem: Mutex<Option<String>>,
    /// The canary generations sent to it (see `canary`).
    pub canary: Mutex<Canary>,
    /// Taken out of rotation by an operator (`gatewayctl worker cordon`):
    /// no new request, while those in flight finish.
    pub cordoned: AtomicBool,
    /// Its zone is shifted away: it takes new requests only when no worker
    /// elsewhere can.
    pub zone_shifted: AtomicBool,
}

impl Worker {
    /// The URL of `endpoint` on the worker.
    pub fn endpoint(&self, endpoint: Endpoint) -> &Uri {
        match endpoint {
            Endpoint::Chat => &self.endpoints[0],
            Endpoint::Completion => &self.endpoints[1],
        }
    }

    pub fn new(
        id: WorkerId,
        pool: String,
        url: Uri,
        zone: String,
        labels: BTreeMap<String, String>,
        breaker: &BreakerConfig,
    ) -> Worker {
        Worker {
            in_flight_gauge: crate::metrics::worker_in_flight(&pool, &id),
            endpoints: [Endpoint::Chat, Endpoint::Completion]
                .map(|endpoint| crate::upstream::uri(&url, endpoint.path())),
            id_header: http::HeaderValue::from_str(&id).ok(),
            id,
            pool,
            url,
            zone,
            labels,
            engine: Engine::default(),
            in_flight: AtomicU32::new(0),
            pending_prefill: AtomicUsize::new(0),
            probe: Mutex::new(ProbeState::default()),
            breaker: Mutex::new(Breaker::new(breaker)),
            reported_load: Mutex::new(None),
            reported_block_size: Mutex::new(None),
            problem: Mutex::new(None),
            canary: Mutex::new(Canary::new(Instant::now())),
            cordoned: AtomicBool::new(false),
            zone_shifted: AtomicBool::new(false),
        }
    }

    /// This worker running `engine`.
    pub fn with_engine(mut self, engine: Engine) -> Worker {
        self.engine = engine;
        self
    }

    /// Whether routing may consider this worker now: not cordoned, probes
    /// say it is up and its breaker is not open (a half-open one's trial is
    /// taken later).
    pub fn routable(&self, now: Instant) -> bool {
        !self.cordoned.load(Ordering::Relaxed)
            && self.probe.lock().unwrap().routable()
            && self.breaker.lock().unwrap().available(now)
    }

    pub fn report_load(&self, load: LoadReport, now: Instant) {
        *self.reported_load.lock().unwrap() = Some((load, now));
    }

    /// The worker's own load report, unless older than `stale`.
    pub fn fresh_load(&self, now: Instant, stale: Duration) -> Option<LoadReport> {
        let reported = *self.reported_load.lock().unwrap();
        reported.and_then(|(load, at)| (now.saturating_duration_since(at) < stale).then_some(load))
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn pending_prefill(&self) -> usize {
        self.pending_prefill.load(Ordering::Relaxed)
    }

    /// Counts `tokens` of prefill against this worker until the guard drops.
    pub fn start_prefill(self: &Arc<Self>, tokens: usize) -> Prefill {
        self.pending_prefill.fetch_add(tokens, Ordering::Relaxed);
        Prefill(self.clone(), tokens)
    }

    /// Counts a request against this worker until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.in_flight_gauge.set(n);
        InFlight(self.clone())
    }
}

/// One request in flight on a worker; dropping it ends the count.
pub struct InFlight(Arc<Worker>);

impl InFlight {
    pub fn worker(&self) -> &Arc<Worker> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let n = self.0.in_flight.fetch_sub(1, Ordering::Relaxed) - 1;
        self.0.in_flight_gauge.set(n);
    }
}

/// Prefill sent to a worker and not answered yet; dropping it ends the count.
pub struct Prefill(Arc<Worker>, usize);

impl Drop for Prefill {
    fn drop(&mut self) {
        self.0.pending_prefill.fetch_sub(self.1, Ordering::Relaxed);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A worker of pool `p` in `zone`, at an address nothing listens on.
    pub(crate) fn worker(id: &str, zone: &str) -> Arc<Worker> {
        Arc::new(Worker::new(
            id.into(),
            "p".into(),
            "http://127.0.0.1:1".parse().unwrap(),
            zone.into(),
            Default::default(),
            &BreakerConfig::default(),
        ))
    }
}
