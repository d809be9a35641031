//! Registration in etcd: the worker's [`Registration`] under
//! `{prefix}/workers/{pool}/{id}` on a lease kept alive in the background.
//!
//! A worker that dies disappears when its lease expires. One that loses its
//! lease (etcd unreachable past the TTL, or restarted without its data)
//! registers again on a new lease as soon as etcd answers, logging every
//! failed try. Each keep-alive also reads the key back: a record deleted
//! behind the worker's back is put again, and one another registration
//! took over (the same id on another lease) is reported on every tick until
//! the key is free again. Either way it never serves unregistered silently.
//! A graceful stop revokes the lease first, so gateways stop routing here
//! before the drain.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn,
    TxnOp,
};
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

/// What a keep-alive tick found under the worker's key.
#[derive(Debug, PartialEq)]
enum Found {
    /// This worker's record on this worker's lease.
    Ours,
    /// Nothing, or something else on this worker's lease: safe to put again.
    /// The key's `mod_revision` as read (0: absent), for the put's compare.
    Reclaim { mod_revision: i64, absent: bool },
    /// Another registration on another lease (or on none: an operator's put).
    Taken { lease: i64 },
}

impl Session {
    async fn run(self, mut stopped: oneshot::Receiver<()>) {
        let mut backoff = Duration::from_millis(100);
        // A lost lease is said once, not at every retry.
        let mut lost = false;
        loop {
            let granted = tokio::select! {
                granted = self.grant() => granted,
                _ = &mut stopped => return,
            };
            let ended = match granted {
                Ok((client, id)) => {
                    // From the grant on, a stop must revoke: the put may
                    // have landed even if its answer never came.
                    let established = tokio::select! {
                        established = self.establish(client.clone(), id) => established,
                        _ = &mut stopped => {
                            self.revoke(client, id).await;
                            return;
                        }
                    };
                    match established {
                        Ok(lease) => {
                            backoff = Duration::from_millis(100);
                            lost = false;
                            self.keep(lease, &mut stopped).await
                        }
                        Err(e) => Ended::Lost(e.to_string()),
                    }
                }
                Err(e) => Ended::Lost(e.to_string()),
            };
            match ended {
                Ended::Stopped => return,
                Ended::Lost(reason) if !lost => {
                    lost = true;
                    tracing::warn!(key = %self.key, %reason, ttl_s = self.ttl_s,
                        "etcd lease lost; registering again when etcd answers (gateways drop this worker once the lease's TTL passes)");
                }
                Ended::Lost(reason) => {
                    tracing::debug!(key = %self.key, %reason, retry_ms = backoff.as_millis() as u64, "still not registered in etcd");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = &mut stopped => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Connects and grants a new lease, with nothing on it yet.
    async fn grant(&self) -> Result<(Client, i64), etcd_client::Error> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(2))
            // A member cut off from its cluster refuses instead of keeping
            // a lease the others let expire.
            .with_require_leader(true);
        let mut client = Client::connect(&self.endpoints, Some(options)).await?;
        let id = client.lease_grant(self.ttl_s, None).await?.id();
        Ok((client, id))
    }

    /// Puts the record on lease `id` and starts keeping it alive. A record
    /// already there (this worker's previous life, or another one with its
    /// id) is replaced: the newest registration wins, the older one says so.
    async fn establish(&self, mut client: Client, id: i64) -> Result<Lease, etcd_client::Error> {
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

    async fn revoke(&self, mut client: Client, id: i64) {
        match client.lease_revoke(id).await {
            Ok(_) => tracing::info!(key = %self.key, "deregistered from etcd"),
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "cannot deregister; the lease expires on its own")
            }
        }
    }

    /// Keeps the lease alive, and the record under it, until stopped
    /// (revoking it) or lost.
    async fn keep(&self, mut lease: Lease, stopped: &mut oneshot::Receiver<()>) -> Ended {
        // A third of the TTL: two keep-alives may be lost before the lease expires.
        let period = Duration::from_millis(self.ttl_s as u64 * 1000 / 3);
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut *stopped => {
                    self.revoke(lease.client, lease.id).await;
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
            if let Err(e) = self.check(&mut lease).await {
                return Ended::Lost(e.to_string());
            }
        }
    }

    /// Reads the key back; puts the record again if it went missing.
    async fn check(&self, lease: &mut Lease) -> Result<(), etcd_client::Error> {
        let got = lease.client.get(self.key.as_str(), None).await?;
        let kv = got.kvs().first();
        let found = found(
            kv.map(|kv| (kv.value(), kv.lease(), kv.mod_revision())),
            self.value.as_bytes(),
            lease.id,
        );
        match found {
            Found::Ours => Ok(()),
            Found::Taken { lease: other } => {
                // Putting it back would fight the other registration on
                // every tick; gateways route to whatever the key says.
                tracing::error!(key = %self.key, lease = lease.id, other_lease = other, "another registration holds this worker's key; serving unregistered until it is free");
                Ok(())
            }
            Found::Reclaim {
                mod_revision,
                absent,
            } => {
                // Compared on what was just read: a registration put
                // meanwhile is not overwritten.
                let put = PutOptions::new().with_lease(lease.id);
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        self.key.as_str(),
                        CompareOp::Equal,
                        mod_revision,
                    )])
                    .and_then([TxnOp::put(
                        self.key.as_str(),
                        self.value.as_str(),
                        Some(put),
                    )]);
                let restored = lease.client.txn(txn).await?.succeeded();
                let reason = if absent { "deleted" } else { "changed" };
                if restored {
                    tracing::warn!(key = %self.key, lease = lease.id, reason, "registration was removed behind this worker's back; put again");
                } else {
                    tracing::warn!(key = %self.key, reason, "registration was removed and written again meanwhile; checking next tick");
                }
                Ok(())
            }
        }
    }
}

/// Whose record `kv` (value, lease, mod revision; `None`: absent) is, for
/// the worker whose record is `ours` on lease `lease`.
fn found(kv: Option<(&[u8], i64, i64)>, ours: &[u8], lease: i64) -> Found {
    match kv {
        None => Found::Reclaim {
            mod_revision: 0,
            absent: true,
        },
        Some((value, on, _)) if on == lease && value == ours => Found::Ours,
        Some((_, on, mod_revision)) if on == lease => Found::Reclaim {
            mod_revision,
            absent: false,
        },
        Some((_, on, _)) => Found::Taken { lease: on },
    }
}

/// Milliseconds since the Unix epoch, for `started_at_ms`.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_reclaimed_only_when_no_other_lease_holds_it() {
        let ours = b"{\"id\":\"w1\"}".as_slice();
        assert_eq!(found(Some((ours, 7, 3)), ours, 7), Found::Ours);
        assert_eq!(
            found(None, ours, 7),
            Found::Reclaim {
                mod_revision: 0,
                absent: true
            }
        );
        assert_eq!(
            found(Some((b"{}".as_slice(), 7, 5)), ours, 7),
            Found::Reclaim {
                mod_revision: 5,
                absent: false
            }
        );
        // The same record on another lease is still another registration.
        assert_eq!(
            found(Some((ours, 8, 5)), ours, 7),
            Found::Taken { lease: 8 }
        );
        assert_eq!(
            found(Some((ours, 0, 5)), ours, 7),
            Found::Taken { lease: 0 }
        );
    }
}
