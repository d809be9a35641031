//! Traces across the hop: W3C `traceparent`/`tracestate` taken from a
//! request, carried by its spans, and put on the requests it makes, with
//! spans exported over OTLP (HTTP, protobuf or JSON) when an endpoint is
//! configured. Without one, nothing is recorded and an incoming trace
//! context is passed on unchanged.

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C trace-context headers.
pub const HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// The `[tracing]` section of a config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Where spans go, e.g. `http://127.0.0.1:4318/v1/traces`; none: no spans.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` (default) or `http/json`.
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Share of the traces started here that are recorded; a request whose
    /// caller sampled its trace is always recorded (parent-based). Default 1.
    #[serde(default = "one")]
    pub sample_ratio: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

fn one() -> f64 {
    1.0
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            protocol: OtlpProtocol::default(),
            sample_ratio: one(),
        }
    }
}

impl TracingConfig {
    /// What is wrong with it, if anything, naming the key.
    pub fn problem(&self) -> Option<String> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Some(format!(
                "tracing.sample_ratio: must be between 0 and 1, got {}",
                self.sample_ratio
            ));
        }
        let url = self.otlp_endpoint.as_deref()?;
        let usable = url
            .parse::<http::Uri>()
            .is_ok_and(|u| u.host().is_some() && matches!(u.scheme_str(), Some("http" | "https")));
        (!usable).then(|| format!("tracing.otlp_endpoint: `{url}` is not an http(s) URL"))
    }
}

/// Exports spans while alive; dropping it sends what is still buffered.
pub struct Exporter(SdkTracerProvider);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// The tracing layer that records spans for OTLP, and what keeps it
/// exporting; `None` without an endpoint.
pub fn layer<S>(
    config: &TracingConfig,
    service: &'static str,
) -> Result<Option<(impl tracing_subscriber::Layer<S>, Exporter)>, String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    let protocol = match config.protocol {
        OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
        OtlpProtocol::HttpJson => Protocol::HttpJson,
    };
    // The exporter's HTTP client (reqwest on rustls) needs the process's
    // crypto provider, which is ring everywhere in this project.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("tracing.otlp_endpoint: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    let tracer = provider.tracer(service);
    let layer = tracing_opentelemetry::layer().with_tracer(tracer);
    Ok(Some((layer, Exporter(provider))))
}

/// Makes `span` continue the trace `headers` carry, if any, and records its
/// ids in the span's `trace_id` and `span_id` fields (declared empty) for
/// the logs.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let context = span.context();
    let trace = context.span().span_context().clone();
    if trace.is_valid() {
        span.record("trace_id", tracing::field::display(trace.trace_id()));
        span.record("span_id", tracing::field::display(trace.span_id()));
    }
}

/// The trace-context headers for a request made under `span`: its own when
/// spans are recorded, else those of the incoming request, passed on.
pub fn headers_for(span: &tracing::Span, incoming: &http::HeaderMap) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    let context = span.context();
    if context.span().span_context().is_valid() {
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&context, &mut HeaderInjector(&mut headers))
        });
        return headers;
    }
    for name in HEADERS {
        if let Some(value) = incoming.get(name) {
            headers.insert(name, value.clone());
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_named() {
        let parse = |text: &str| serde_json::from_str::<TracingConfig>(text).unwrap();
        assert_eq!(parse("{}").problem(), None);
        let ratio = parse(r#"{"sample_ratio": 1.5}"#).problem().unwrap();
        assert!(ratio.starts_with("tracing.sample_ratio"), "{ratio}");
        let url = parse(r#"{"otlp_endpoint": "collector"}"#)
            .problem()
            .unwrap();
        assert!(url.starts_with("tracing.otlp_endpoint"), "{url}");
        assert!(serde_json::from_str::<TracingConfig>(r#"{"protocol": "grpc"}"#).is_err());
    }

    #[test]
    fn without_spans_the_incoming_context_is_passed_on() {
        let mut incoming = http::HeaderMap::new();
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        incoming.insert("traceparent", parent.parse().unwrap());
        incoming.insert("x-other", "1".parse().unwrap());
        let headers = headers_for(&tracing::Span::none(), &incoming);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["traceparent"], parent);
    }
}
