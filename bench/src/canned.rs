//! A canned upstream: answers every chat completion at once with the same
//! bytes, `/health` and `/v1/models` like a worker. In front of it, a proxy's
//! own cost per request is all there is to see. Not the test harness's fake
//! worker: that one serializes its answer and records every request's
//! credentials, a cost and a growing list that would weigh on 100k requests.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const COMPLETION: &str = r#"{"id":"chatcmpl-canned","object":"chat.completion","created":0,"model":"sim-llama","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"length","logprobs":null}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}"#;
const HEALTH: &str = r#"{"status":"ok","worker_id":"canned","model":"sim-llama","engine":"canned","block_size":16,"load":{"running":0,"waiting":0,"kv_blocks_used":0,"kv_blocks_total":1}}"#;
const MODELS: &str = r#"{"object":"list","data":[{"id":"sim-llama","object":"model","created":0,"owned_by":"canned"}]}"#;

/// The running upstream; dropping it stops accepting.
pub struct Canned {
    pub port: u16,
    task: JoinHandle<()>,
}

impl Drop for Canned {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start() -> anyhow::Result<Canned> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: http::Request<Incoming>| {
                    let body = match req.uri().path() {
                        "/health" => HEALTH,
                        "/v1/models" => MODELS,
                        _ => COMPLETION,
                    };
                    async move {
                        // Read whole, so the connection stays open for the next request.
                        let _ = req.into_body().collect().await;
                        let response = http::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(body.as_bytes())));
                        Ok::<_, Infallible>(response.expect("static parts"))
                    }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    });
    Ok(Canned { port, task })
}
