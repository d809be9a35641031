//! Listeners and connections: the API socket (HTTP/1.1 and h2c, or TLS with
//! ALPN), each request in its context (`context`), the admin socket, the
//! health probes, and graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::admin::{self, Admin};
use crate::admit::Admit;
use crate::api::{self, Gateway};
use crate::body::Body;
use crate::config::{Config, Listeners};
use crate::plugin::{PluginEngine, PluginWatcher, WatchHandle};
use crate::pools::Registry;
use crate::tenancy::config::AuthMode;
use crate::tenancy::Tenancy;
use crate::tls::{self, TlsError};
use crate::upstream::Upstream;
use crate::{context, control, kv_zmq, live, metrics, mirror, probe};
use protocol::{ApiError, Bus, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot load a pool's tokenizer: {0}")]
    Tokenizer(#[from] prompt::TokenizerError),
    #[error(transparent)]
    Bus(#[from] protocol::BusError),
    #[error("cannot start the plugin host: {0}")]
    Plugins(#[from] crate::plugin::PluginError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot read the API keys or open the usage log: {0}")]
    Tenancy(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running gateway.
pub struct Handle {
    api_addr: SocketAddr,
    admin_addr: SocketAddr,
    draining: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    grace: Duration,
    api: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    plugins: Option<WatchHandle>,
}

pub async fn start(config: Config) -> Result<Handle, StartError> {
    let bus = match &config.bus.nats_url {
        Some(url) => Some(Bus::nats(url).await?),
        None => None,
    };
    start_on_bus(config, bus).await
}

/// Like [`start`], mirroring workers' KV events and load from `bus` when given
/// (the embedded demo and benches pass an in-process bus).
pub async fn start_on_bus(config: Config, bus: Option<Bus>) -> Result<Handle, StartError> {
    let prometheus = metrics::install();
    // Tokenizers load before any port is bound: a bad path stops startup.
    let registry = Registry::from_config(&config)?;
    let live = live::shared(config.clone(), registry);
    let plugins = if config.etcd.endpoints.is_empty() {
        let registry = live.load().registry.clone();
        start_plugins(&config, &registry).await?
    } else {
        None
    };
    let tls = config
        .listeners
        .tls
        .as_ref()
        .map(tls::server_config)
        .transpose()?
        .map(TlsAcceptor::from);
    let upstream = Upstream::new(&config.upstream)?;
    let api_listener = bind(config.listeners.api).await?;
    let admin_listener = bind(config.listeners.admin).await?;
    let api_addr = api_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config.listeners.api,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config.listeners.admin,
            source,
        })?;

    let mut background = Vec::new();
    // With etcd, it feeds the policy slots too; the directory watcher serves embedded mode.
    let tenancy = Arc::new(
        Tenancy::new(&config, config.auth_mode, bus.is_some()).map_err(StartError::Tenancy)?,
    );
    let control = if config.etcd.endpoints.is_empty() {
        None
    } else {
        let (control, snapshots, tasks) = control::start(config.clone(), live.clone()).await;
        background.extend(tasks);
        if config.auth_mode == AuthMode::Keys && config.auth.keys_file.is_none() {
            background.push(tenancy.follow_etcd(&config.etcd.prefix, snapshots));
        }
        Some(control)
    };
    if let (AuthMode::Keys, Some(path)) = (config.auth_mode, &config.auth.keys_file) {
        background.push(tenancy.watch_file(path.clone()));
    }
    background.push(tenancy.upkeep());
    if let Some(bus) = &bus {
        let subject = protocol::bus::Subjects::new(&config.bus.subject_prefix).limits();
        background.push(tenancy.share(bus.clone(), subject, config.limits.exchange));
    }
    if config.auth_mode == AuthMode::None {
        tracing::warn!(api = %api_addr, "no API keys: anyone who reaches the API may use it");
    }
    let grace = config.listeners.drain_grace;
    let load_stale = config.bus.load_stale;
    let health_config = config.health.clone();
    let bus_config = config.bus.clone();
    let listeners = config.listeners.clone();
    // A request may queue, then fail over until its total timeout.
    let backstop =
        config.admission.max_queue_wait + config.retry.total_timeout + Duration::from_secs(1);
    let gateway = Arc::new(Gateway {
        admit: Admit::new(config.listeners.max_concurrent_requests),
        tenancy,
        live: live.clone(),
        upstream: upstream.clone(),
        bus: bus.clone(),
        load_stale,
        control,
    });
    let draining = Arc::new(AtomicBool::new(false));
    let admin = Arc::new(Admin {
        gateway: gateway.clone(),
        draining: draining.clone(),
        prometheus: prometheus.clone(),
    });
    let (stop, stop_rx) = watch::channel(false);

    background.extend([
        tokio::spawn(probe::run_probes(live.clone(), upstream, health_config)),
        tokio::spawn(kv_zmq::run(live.clone())),
        tokio::spawn(serve_admin(admin_listener, admin)),
        tokio::spawn(async move {
            // Histograms keep raw samples until upkeep folds them.
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                prometheus.run_upkeep();
            }
        }),
    ]);
    if let Some(bus) = bus {
        let live = live.clone();
        background.push(tokio::spawn(async move {
            if let Err(e) = mirror::run(bus, live, bus_config).await {
                tracing::error!(error = %e, "cannot follow workers' KV events; routing on approximations");
            }
        }));
    }
    let api = tokio::spawn(serve_api(
        api_listener,
        gateway,
        tls,
        stop_rx,
        listeners,
        backstop,
    ));
    tracing::info!(api = %api_addr, admin = %admin_addr, "gateway started");
    Ok(Handle {
        api_addr,
        admin_addr,
        draining,
        stop,
        grace,
        plugins,
        api,
        background,
    })
}

/// Loads each pool's bound policy before serving (a refused one leaves the
/// pool on the built-in policy, with the refusal in `/status`), then keeps
/// watching the plugin directory for new versions and configs.
async fn start_plugins(
    config: &Config,
    registry: &Registry,
) -> Result<Option<WatchHandle>, StartError> {
    let bound: Vec<_> = config
        .pools
        .iter()
        .filter_map(|p| Some((p.name.clone(), p.policy.clone()?)))
        .collect();
    let Some(dir) = config.plugins.dir.clone().filter(|_| !bound.is_empty()) else {
        return Ok(None);
    };
    let mut watcher = PluginWatcher::new(PluginEngine::new(&config.plugins)?, dir);
    for (pool, binding) in bound {
        let slot = registry
            .pools()
            .iter()
            .find(|p| p.name == pool)
            .expect("pools come from this config");
        if let Some(shadow) = binding.shadow_binding() {
            watcher.watch(pool.clone(), shadow, slot.shadow.slot.clone());
        }
        watcher.watch(pool, binding, slot.policy.clone());
    }
    // Compiling is blocking work: off the runtime's threads.
    let watcher = tokio::task::spawn_blocking(move || {
        watcher.poll_once();
        watcher
    })
    .await
    .expect("the first plugin poll does not panic");
    Ok(Some(watcher.spawn(Duration::from_millis(
        config.plugins.poll_interval_ms,
    ))))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

impl Handle {
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Drains: `/ready` turns 503, new connections are refused, requests in
    /// flight get the grace period to finish; then everything stops.
    pub async fn shutdown(self) {
        self.draining.store(true, Ordering::Relaxed);
        let _ = self.stop.send(true);
        tracing::info!(grace_ms = self.grace.as_millis() as u64, "draining");
        let mut api = self.api;
        if tokio::time::timeout(self.grace, &mut api).await.is_err() {
            tracing::warn!("drain grace period over; closing remaining connections");
            api.abort();
        }
        for task in self.background {
            task.abort();
        }
        if let Some(plugins) = self.plugins {
            plugins.stop();
        }
        tracing::info!("gateway stopped");
    }
}

async fn serve_api(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
    listeners: Listeners,
    backstop: Duration,
) {
    let builder = connection_builder(listeners.idle_timeout);
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(listeners.max_connections));
    let first_head = listeners.header_read_timeout;
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics::connection_refused("too_many");
            tokio::spawn(refuse(tcp, tls.is_none()));
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let requested = Arc::new(Notify::new());
        let head = requested.clone();
        let gateway = gateway.clone();
        let hyper_service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            head.notify_one();
            serve_request(gateway.clone(), req, peer, backstop)
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _open = permit;
            let served = match tls {
                Some(tls) => match tokio::time::timeout(first_head, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let conn = builder.serve_connection(TokioIo::new(stream), hyper_service);
                        with_first_head(watcher.watch(conn), &requested, first_head).await
                    }
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                },
                None => {
                    let conn = builder.serve_connection(TokioIo::new(tcp), hyper_service);
                    with_first_head(watcher.watch(conn), &requested, first_head).await
                }
            };
            match served {
                Some(Err(e)) => tracing::debug!(%peer, error = %e, "connection closed with error"),
                Some(Ok(())) => {}
                None => {
                    metrics::connection_refused("header_timeout");
                    tracing::debug!(%peer, "no request head in time; connection closed");
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn serve_request(
    gateway: Arc<Gateway>,
    req: http::Request<Incoming>,
    peer: SocketAddr,
    backstop: Duration,
) -> Result<http::Response<Body>, Infallible> {
    let handle = |req| api::handle(gateway, req);
    Ok(context::within(req, peer, backstop, handle).await)
}

/// Serves `conn` on, once a first request head arrived (`requested`) within
/// `limit`; `None` when none did and the connection was dropped. Later
/// requests on it wait under hyper's own header timer (the idle timeout).
async fn with_first_head<F: Future>(
    conn: F,
    requested: &Notify,
    limit: Duration,
) -> Option<F::Output> {
    tokio::pin!(conn);
    tokio::select! {
        served = &mut conn => return Some(served),
        arrived = tokio::time::timeout(limit, requested.notified()) => {
            if arrived.is_err() {
                return None;
            }
        }
    }
    Some(conn.await)
}

/// Answers a connection over `listeners.max_connections` with a 503 (in
/// plain HTTP; a TLS one is just closed) and closes it, before reading any
/// of it.
async fn refuse(mut tcp: tokio::net::TcpStream, plain: bool) {
    if plain {
        let body = ApiError::new(
            ErrorKind::Overloaded,
            "too many open connections; retry later",
        )
        .to_json();
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
            body.len()
        );
        let write = tcp.write_all(answer.as_bytes());
        let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
    }
    let _ = tcp.shutdown().await;
}

fn connection_builder(idle_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper closes an HTTP/1 connection that sends no request head within this
    // time, which also bounds keep-alive idleness. Heads are bounded in
    // count and size (larger ones get 431).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle_timeout)
        .max_headers(100)
        .max_buf_size(64 * 1024);
    // HTTP/2: a client may not open streams, or reset them, without end.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(idle_timeout / 2))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(256)
        .max_header_list_size(64 * 1024)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024);
    builder
}

async fn serve_admin(listener: TcpListener, admin: Arc<Admin>) {
    let builder = connection_builder(Duration::from_secs(60));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let admin = admin.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin::handle(admin, req).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}
