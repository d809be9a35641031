//! Registration in etcd: the worker's [`Registration`] under
//! `{prefix}/workers/{pool}/{id}` on a lease kept alive in the background.
//!
//! A worker that dies disappears when its lease expires. One that loses its
//! lease (etcd unreachable past the TTL, or restarted without its data)
//! registers again on a new lease as soon as etcd answers, logging every
//! failed try: it never serves unregistered silently. A graceful stop
//! revokes the lease first, so gateways stop routing here before the drain.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, ConnectOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use protocol::control::{Keys, Registration};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::EtcdConfig;

/// Longest wait between two tries to reach etcd.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The background registration; [`Registered::deregister`] ends it.
pub struct Registered {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Registered {
    /// Starts registering `registration` and keeps it alive until deregistered.
    pub fn spawn(config: &EtcdConfig, registration: Registration) -> Registered {
        let key = Keys::new(&config.prefix).worker(&registration.pool, &registration.id);
        let value = serde_json::to_string(&registration).expect("a registration serializes");
        let (stop, stopped) = oneshot::channel();
        let session = Session {
            endpoints: config.endpoints.clone(),
            ttl_s: config.lease_ttl_s,
            key,
            value,
        };
        Registered {
            stop,
            task: tokio::spawn(session.run(stopped)),
        }
    }

    /// Deletes the record (revoking its lease) and stops keeping it alive.
    pub async fn deregister(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "registration task failed");
        }
    }
}

struct Session {
    endpoints: Vec<String>,
    ttl_s: i64,
    key: String,
    value: String,
}

/// How one lease ended.
enum Ended {
    /// Deregistration asked for; the lease is revoked (or etcd is unreachable).
    Stopped,
    Lost(String),
}

/// A registration in etcd on a live lease.
struct Lease {
    client: Client,
    id: i64,
    keeper: LeaseKeeper,
    responses: LeaseKeepAliveStream,
}

impl Session {
    async fn run(self, mut stopped: oneshot::Receiver<()>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let established = tokio::select! {
                established = self.establish() => established,
                _ = &mut stopped => return,
            };
            let ended = match established {
                Ok(lease) => {
                    backoff = Duration::from_millis(100);
                    self.keep(lease, &mut stopped).await
                }
                Err(e) => Ended::Lost(e.to_string()),
            };
            match ended {
                Ended::Stopped => return,
                Ended::Lost(reason) => {
                    tracing::warn!(key = %self.key, %reason, retry_ms = backoff.as_millis() as u64, "not registered in etcd; serving unregistered until it answers");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = &mut stopped => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Puts the record on a new lease.
    async fn establish(&self) -> Result<Lease, etcd_client::Error> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(2));
        let mut client = Client::connect(&self.endpoints, Some(options)).await?;
        let id = client.lease_grant(self.ttl_s, None).await?.id();
        let put = PutOptions::new().with_lease(id);
        client
            .put(self.key.as_str(), self.value.as_str(), Some(put))
            .await?;
        let (keeper, responses) = client.lease_keep_alive(id).await?;
        tracing::info!(key = %self.key, lease = id, ttl_s = self.ttl_s, "registered in etcd");
        Ok(Lease {
            client,
            id,
            keeper,
            responses,
        })
    }

    /// Keeps the lease alive until stopped (revoking it) or lost.
    async fn keep(&self, mut lease: Lease, stopped: &mut oneshot::Receiver<()>) -> Ended {
        // A third of the TTL: two keep-alives may be lost before the lease expires.
        let period = Duration::from_millis(self.ttl_s as u64 * 1000 / 3);
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut *stopped => {
                    match lease.client.lease_revoke(lease.id).await {
                        Ok(_) => tracing::info!(key = %self.key, "deregistered from etcd"),
                        Err(e) => tracing::warn!(key = %self.key, error = %e, "cannot deregister; the lease expires on its own"),
                    }
                    return Ended::Stopped;
                }
            }
            if let Err(e) = lease.keeper.keep_alive().await {
                return Ended::Lost(e.to_string());
            }
            match tokio::time::timeout(period, lease.responses.message()).await {
                Ok(Ok(Some(answer))) if answer.ttl() > 0 => {}
                Ok(Ok(Some(_))) => return Ended::Lost("the lease expired".to_string()),
                Ok(Ok(None)) => return Ended::Lost("keep-alive stream closed".to_string()),
                Ok(Err(e)) => return Ended::Lost(e.to_string()),
                Err(_) => return Ended::Lost("keep-alive unanswered".to_string()),
            }
        }
    }
}

/// Milliseconds since the Unix epoch, for `started_at_ms`.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
