//! A small OTLP/HTTP receiver for the tests: it takes the JSON encoding
//! (`http/json`) that gateways and workers are configured to send it, and
//! keeps every span with its service. Test-only.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One span as received.
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub attributes: Value,
}

pub struct Receiver {
    /// Where to send spans: `…/v1/traces`.
    pub url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    /// Every request body, as sent.
    pub raw: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let (kept, bodies) = (spans.clone(), raw.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (kept, bodies) = (kept.clone(), bodies.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let (kept, bodies) = (kept.clone(), bodies.clone());
                            async move {
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let text = String::from_utf8_lossy(&body).into_owned();
                                if let Ok(export) = serde_json::from_str::<Value>(&text) {
                                    kept.lock().unwrap().extend(spans_of(&export));
                                }
                                bodies.lock().unwrap().push(text);
                                Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                                    "{}",
                                ))))
                            }
                        },
                    );
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Receiver {
            url: format!("http://{addr}/v1/traces"),
            spans,
            raw,
            task,
        }
    }

    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

/// The spans of one `ExportTraceServiceRequest` in its JSON encoding.
fn spans_of(export: &Value) -> Vec<Span> {
    let mut out = Vec::new();
    for resource in export["resourceSpans"].as_array().into_iter().flatten() {
        let service = resource["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_string();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let text = |key: &str| span[key].as_str().unwrap_or_default().to_string();
                out.push(Span {
                    service: service.clone(),
                    name: text("name"),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                    attributes: span["attributes"].clone(),
                });
            }
        }
    }
    out
}
