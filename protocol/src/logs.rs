//! Every binary's logs: to stderr, filtered by `RUST_LOG` (else `default`),
//! as text (coloured only on a terminal, so a log file never holds escape
//! codes) or as one JSON object per line for a log pipeline, with the
//! fields of the request's span (its `request_id` and `trace_id`) in each
//! line; and its spans, exported over OTLP when configured (`traces`).

use std::io::IsTerminal;

use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::traces::{Exporter, TracingConfig};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("`{other}` is not a log format: text or json")),
        }
    }
}

/// The `[logs]` section of a config file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsConfig {
    /// `text` (default) or `json`; `--log-format` overrides it.
    #[serde(default)]
    pub format: LogFormat,
}

/// Installs the logs, and the span exporter when `tracing` names an
/// endpoint; keep what it returns alive until exit (dropping it flushes).
pub fn init(
    default: &str,
    format: LogFormat,
    tracing: &TracingConfig,
    service: &'static str,
) -> Result<Option<Exporter>, String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let (spans, exporter) = match crate::traces::layer(tracing, service)? {
        Some((layer, exporter)) => (Some(layer), Some(exporter)),
        None => (None, None),
    };
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(spans)
        .init();
    Ok(exporter)
}
