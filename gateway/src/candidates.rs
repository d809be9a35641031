//! Candidates: the workers of a pool that may take this request now (probe
//! health and circuit breaker permitting), with what routing weighs: zone and
//! live load.

use std::sync::Arc;
use std::time::Instant;

use crate::pools::{Pool, Worker};

#[derive(Clone)]
pub struct Candidate {
    pub worker: Arc<Worker>,
    /// In the gateway's own zone.
    pub local: bool,
    pub in_flight: u32,
}

pub fn gather(pool: &Pool, zone: &str, now: Instant) -> Vec<Candidate> {
    pool.workers
        .iter()
        .filter(|w| w.probe.lock().unwrap().routable() && w.breaker.lock().unwrap().available(now))
        .map(|w| Candidate {
            worker: w.clone(),
            local: w.zone == zone,
            in_flight: w.in_flight(),
        })
        .collect()
}
