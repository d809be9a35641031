//! Builders of requests and candidates for policy unit tests (feature `testing`).
//!
//! Defaults: a healthy candidate in zone `a` with no labels, no load, no
//! overlap and score 0; a first-attempt request for model `m` in pool
//! `default` from a gateway in zone `a`, without a session key.

use crate::{Candidate, Health, Label, Load, Request};

/// A healthy, idle candidate `id` in zone `a`.
pub fn candidate(id: &str) -> Candidate {
    Candidate {
        id: id.to_string(),
        zone: "a".to_string(),
        labels: Vec::new(),
        health: Health::Healthy,
        load: Load {
            in_flight: 0,
            running: None,
            waiting: None,
            kv_blocks_used: None,
            kv_blocks_total: None,
        },
        overlap_blocks: 0,
        score: 0.0,
    }
}

/// A first-attempt request to pool `default` from a gateway in zone `a`.
pub fn request() -> Request {
    Request {
        model: "m".to_string(),
        pool: "default".to_string(),
        stream: false,
        prompt_tokens: 0,
        block_size: 16,
        session_key: None,
        headers: Vec::new(),
        gateway_zone: "a".to_string(),
        attempt: 1,
    }
}

impl Candidate {
    pub fn in_zone(mut self, zone: &str) -> Self {
        self.zone = zone.to_string();
        self
    }

    pub fn with_label(mut self, key: &str, value: &str) -> Self {
        self.labels.push(Label {
            key: key.to_string(),
            value: value.to_string(),
        });
        self
    }

    pub fn with_score(mut self, score: f64) -> Self {
        self.score = score;
        self
    }

    pub fn with_in_flight(mut self, in_flight: u32) -> Self {
        self.load.in_flight = in_flight;
        self
    }

    pub fn with_running(mut self, running: u32) -> Self {
        self.load.running = Some(running);
        self
    }
}

impl Request {
    pub fn in_zone(mut self, gateway_zone: &str) -> Self {
        self.gateway_zone = gateway_zone.to_string();
        self
    }

    pub fn with_session(mut self, key: &str) -> Self {
        self.session_key = Some(key.to_string());
        self
    }
}
