//! Tells the fleet, under `{prefix}/gateways/{id}` on a lease, which routing
//! document this gateway serves and the last one it refused: what
//! `gatewayctl config get` shows beside the document last written. Written
//! when it changes; the lease lets a gateway that stopped disappear.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, ConnectOptions, PutOptions};
use protocol::control::{GatewayReport, Keys};

use super::status::Control;

const TTL_S: i64 = 10;
/// How often the status is compared with what was written last: a change
/// reaches etcd within this.
const TICK: Duration = Duration::from_millis(200);
/// How often the lease is kept alive: a third of its TTL.
const KEEP_ALIVE: Duration = Duration::from_secs(TTL_S as u64 / 3);

/// Reports `control`'s status as gateway `id`, forever.
pub async fn run(endpoints: Vec<String>, keys: Keys, id: String, control: Arc<Control>) {
    loop {
        if let Err(e) = report(&endpoints, &keys, &id, &control).await {
            tracing::debug!(error = %e, "cannot report this gateway's state to etcd");
        }
        tokio::time::sleep(TICK).await;
    }
}

/// One lease: kept alive and rewritten on each change until etcd fails.
async fn report(
    endpoints: &[String],
    keys: &Keys,
    id: &str,
    control: &Control,
) -> Result<(), etcd_client::Error> {
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
    let mut client = Client::connect(endpoints, Some(options)).await?;
    let lease = client.lease_grant(TTL_S, None).await?.id();
    let (mut keeper, mut acks) = client.lease_keep_alive(lease).await?;
    let mut written: Option<GatewayReport> = None;
    let mut kept_alive = Instant::now();
    loop {
        let status = control.status();
        let mut now = GatewayReport {
            id: id.to_string(),
            config_revision: status.config_revision,
            pending_config_revision: status.pending_config_revision,
            refused: status.last_refusal.map(|r| (r.revision, r.reason)),
            ignored: status.ignored_registrations,
            at_ms: 0,
        };
        let changed = written.as_ref().is_none_or(|w| {
            GatewayReport {
                at_ms: 0,
                ..w.clone()
            } != now
        });
        if changed {
            now.at_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let value = serde_json::to_string(&now).expect("a report serializes");
            client
                .put(
                    keys.gateway(id),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await?;
            written = Some(now);
        }
        if kept_alive.elapsed() >= KEEP_ALIVE {
            keeper.keep_alive().await?;
            if acks.message().await?.is_none_or(|ack| ack.ttl() <= 0) {
                return Ok(());
            }
            kept_alive = Instant::now();
        }
        tokio::time::sleep(TICK).await;
    }
}
