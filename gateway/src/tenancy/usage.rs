//! Usage accounting: per key, tenant and model counters in Prometheus, and
//! a JSON line per finished request in `usage.log` for billing.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::jsonl::Appender;
use crate::metrics;

/// One finished request, as the usage log holds it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Unix milliseconds when the request finished.
    pub ts_ms: u64,
    pub request_id: String,
    /// `None` without keys (`auth.mode = "none"`).
    pub key: Option<String>,
    pub tenant: Option<String>,
    pub model: String,
    pub pool: String,
    pub worker: Option<String>,
    pub status: u16,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub ttft_ms: Option<u64>,
    pub duration_ms: u64,
}

/// Where finished requests are counted.
pub struct Usage {
    log: Option<Appender<Record>>,
}

impl Usage {
    /// Appends to `log` when given; a file that cannot be opened stops startup.
    pub fn new(log: Option<&Path>) -> std::io::Result<Usage> {
        Ok(Usage {
            log: log.map(Appender::open).transpose()?,
        })
    }

    pub fn logs(&self) -> bool {
        self.log.is_some()
    }

    /// Counts `record` under its key in Prometheus (without keys,
    /// `llmgw_requests_total` already counts it), and logs it.
    pub fn record(&self, record: Record) {
        if let (Some(key), Some(tenant)) = (&record.key, &record.tenant) {
            metrics::tenant_request(key, tenant, &record.model, record.status);
            metrics::tenant_tokens(
                key,
                tenant,
                &record.model,
                [
                    ("prompt", record.prompt_tokens),
                    ("cached", record.cached_tokens),
                    ("completion", record.completion_tokens),
                ],
            );
        }
        if let Some(log) = &self.log {
            log.append(record);
        }
    }
}

/// Totals of a usage log, per tenant and model, as `gatewayctl usage` prints them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
}

impl Totals {
    pub fn add(&mut self, r: &Record) {
        self.requests += 1;
        self.errors += u64::from(r.status >= 400);
        self.prompt_tokens += r.prompt_tokens;
        self.cached_tokens += r.cached_tokens;
        self.completion_tokens += r.completion_tokens;
    }
}
