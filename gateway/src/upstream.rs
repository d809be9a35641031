//! The HTTP client to workers: pooled connections, HTTP/1.1 or HTTP/2, plain or
//! TLS (`https://` worker URLs), with a connect timeout.

use http::Uri;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;
use crate::config::UpstreamConfig;
use crate::tls::{self, TlsError};

#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Body>,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Result<Upstream, TlsError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls::client_config(config.ca_path.as_deref())?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(Upstream { client })
    }

    pub async fn request(
        &self,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(req).await
    }
}

/// `path` on a worker's base URL.
pub fn uri(base: &Uri, path: &str) -> Uri {
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(path.parse().expect("gateway paths are valid"));
    Uri::from_parts(parts).expect("base URL validated in config")
}

#[cfg(test)]
mod tests {
    #[test]
    fn joins_paths() {
        let base: http::Uri = "https://w.example:8443".parse().unwrap();
        assert_eq!(
            super::uri(&base, "/v1/completions").to_string(),
            "https://w.example:8443/v1/completions"
        );
    }
}
