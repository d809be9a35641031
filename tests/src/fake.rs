//! A stand-in worker for what a real worker will not do on demand: answer
//! every completion with a chosen status, serve over TLS, or start a stream
//! and then fall silent. Test-only.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A request's `Authorization` and `api-key` headers.
pub type Credentials = (Option<String>, Option<String>);

pub struct FakeWorker {
    pub url: String,
    /// Completion requests received.
    pub hits: Arc<AtomicU32>,
    /// The `Authorization` and `api-key` headers of each request, probes included.
    pub credentials: Arc<std::sync::Mutex<Vec<Credentials>>>,
    task: JoinHandle<()>,
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `/health` as healthy, `/v1/models` with the test model (so it
/// passes for any engine kind), and every completion with `status`, or, with
/// status 0, never answers a completion: an engine whose loop hangs while its
/// HTTP thread lives.
pub async fn start(status: u16, tls: Option<Arc<rustls::ServerConfig>>) -> FakeWorker {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU32::new(0));
    let counter = hits.clone();
    let credentials = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = credentials.clone();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let task = tokio::spawn(async move {
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let hits = counter.clone();
            let seen = seen.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let hits = hits.clone();
                        let probe = matches!(req.uri().path(), "/health" | "/v1/models");
                        let header = |name: &str| {
                            let value = req.headers().get(name)?.to_str().ok()?;
                            Some(value.to_string())
                        };
                        let got = (header("authorization"), header("api-key"));
                        seen.lock().unwrap().push(got);
                        async move {
                            if status == 0 && !probe {
                                hits.fetch_add(1, Ordering::Relaxed);
                                std::future::pending::<()>().await;
                            }
                            Ok::<_, Infallible>(answer(req.uri().path(), status, &hits))
                        }
                    });
                let builder = auto::Builder::new(TokioExecutor::new());
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(tcp).await {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                    }
                }
            });
        }
    });
    // Certificates name `localhost`, so TLS URLs use it.
    let url = match scheme {
        "https" => format!("https://localhost:{}", addr.port()),
        _ => format!("http://{addr}"),
    };
    FakeWorker {
        url,
        hits,
        credentials,
        task,
    }
}

/// Serves `/health` and `/v1/models` like [`start`], and answers every
/// completion with a stream whose first event comes at once and then
/// nothing, ever, with the connection open: an engine hung mid-answer.
pub async fn start_stalling() -> FakeWorker {
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU32::new(0));
    let counter = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let hits = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| {
                        let hits = hits.clone();
                        async move {
                            let path = req.uri().path();
                            if matches!(path, "/health" | "/v1/models") {
                                return Ok::<_, Infallible>(
                                    answer(path, 200, &hits).map(|b| b.boxed()),
                                );
                            }
                            hits.fetch_add(1, Ordering::Relaxed);
                            let first = format!(
                                "data: {}\n\n",
                                json!({"id": "stall", "object": "chat.completion.chunk", "created": 0, "model": crate::MODEL,
                                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": "so far"}, "finish_reason": null}]})
                            );
                            let frames = futures_util::stream::once(async move {
                                Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(first)))
                            })
                            .chain(futures_util::stream::pending());
                            let response = http::Response::builder()
                                .header("content-type", "text/event-stream")
                                .body(BodyExt::boxed(StreamBody::new(frames)))
                                .unwrap();
                            Ok(response)
                        }
                    },
                );
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    FakeWorker {
        url: format!("http://{addr}"),
        hits,
        credentials: Arc::default(),
        task,
    }
}

fn answer(path: &str, status: u16, hits: &AtomicU32) -> http::Response<Full<Bytes>> {
    let body = if path == "/v1/models" {
        return json_response(
            200,
            json!({"object": "list", "data": [{"id": crate::MODEL, "object": "model"}]}),
        );
    } else if path == "/health" {
        return json_response(
            200,
            json!({"status": "ok", "worker_id": "fake", "model": crate::MODEL, "engine": "fake", "block_size": 16,
                   "load": {"running": 0, "waiting": 0, "kv_blocks_used": 0, "kv_blocks_total": 0}}),
        );
    } else if status == 200 {
        hits.fetch_add(1, Ordering::Relaxed);
        json!({"id": "fake", "object": "chat.completion", "created": 0, "model": crate::MODEL,
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "from the fake"}, "finish_reason": "stop", "logprobs": null}],
               "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}})
    } else {
        hits.fetch_add(1, Ordering::Relaxed);
        json!({"error": {"message": "fake failure", "type": "server_error", "param": null, "code": null}})
    };
    json_response(status, body)
}

fn json_response(status: u16, body: serde_json::Value) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// A self-signed certificate for `localhost` and 127.0.0.1: (cert PEM, key PEM).
pub fn self_signed() -> (String, String) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    (cert.cert.pem(), cert.signing_key.serialize_pem())
}

/// A rustls server config from PEM strings, with ALPN h2 and http/1.1.
pub fn server_tls(cert_pem: &str, key_pem: &str) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    crate::install_crypto();
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}
