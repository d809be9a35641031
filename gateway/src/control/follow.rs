//! Follows every key under the fleet's prefix: one get at a revision, then a
//! watch from the next revision, so no update is missed or seen twice. After
//! an error it reconnects with backoff and resumes the watch where it
//! stopped; a revision compacted meanwhile, or an etcd whose revision went
//! back (wiped, or restored from an older snapshot), means a fresh get.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use tokio::sync::watch;

use super::status::{Connection, Control};
use crate::metrics;

/// The keys under the prefix at one revision.
#[derive(Debug, Clone, Default)]
pub struct EtcdSnapshot {
    pub revision: i64,
    /// Key → (value, revision of its last change). `Bytes`: a snapshot is
    /// copied per change, plugins' bytes are not.
    pub kvs: BTreeMap<String, (Bytes, i64)>,
    /// Read from the state saved on disk, not from etcd.
    pub from_disk: bool,
}

const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Between two pings on a quiet connection.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Publishes a new [`EtcdSnapshot`] on `out` after each change, forever.
pub async fn run(
    endpoints: Vec<String>,
    root: String,
    control: Arc<Control>,
    out: watch::Sender<Arc<EtcdSnapshot>>,
) {
    let mut state: Option<EtcdSnapshot> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let error = match follow(&endpoints, &root, &mut state, &control, &out).await {
            Ok(()) => "watch ended".to_string(),
            Err(e) => e.to_string(),
        };
        if control.status().etcd == Connection::Connected {
            tracing::warn!(%error, "lost etcd; serving the last known workers, config and plugins");
            backoff = Duration::from_millis(100);
        } else {
            tracing::debug!(%error, "etcd unreachable");
        }
        control.update(|s| s.etcd = Connection::Disconnected);
        metrics::etcd_connected(false);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: a get unless `state` can resume, then the watch.
async fn follow(
    endpoints: &[String],
    root: &str,
    state: &mut Option<EtcdSnapshot>,
    control: &Control,
    out: &watch::Sender<Arc<EtcdSnapshot>>,
) -> Result<(), etcd_client::Error> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        // Notices a dead etcd behind a silent connection. No more often:
        // etcd answers pings closer than `--grpc-keepalive-min-time`
        // (default 5 s) by closing the connection, which would drop the
        // watch every few seconds.
        .with_keep_alive(KEEP_ALIVE, Duration::from_secs(5))
        .with_keep_alive_while_idle(true)
        // A member cut off from its cluster fails the watch instead of
        // keeping it open with nothing coming: this gateway then shows
        // `disconnected` and retries, rather than looking in sync.
        .with_require_leader(true);
    let mut client = Client::connect(endpoints, Some(options)).await?;
    if let Some(saved) = state.as_ref() {
        // A watch from a revision etcd has not reached yet waits for it
        // without a word: check that etcd is not behind what we saw.
        let now = client
            .get(
                root,
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await?;
        let current = now.header().map_or(0, |h| h.revision());
        if current < saved.revision {
            tracing::warn!(
                saved = saved.revision,
                current,
                "etcd is behind the revision followed (wiped or restored); reading everything again"
            );
            *state = None;
        }
    }
    if state.is_none() {
        let got = client
            .get(root, Some(GetOptions::new().with_prefix()))
            .await?;
        let revision = got.header().map_or(0, |h| h.revision());
        let kvs = got
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                (key, (Bytes::copy_from_slice(kv.value()), kv.mod_revision()))
            })
            .collect();
        let snapshot = EtcdSnapshot {
            revision,
            kvs,
            from_disk: false,
        };
        out.send_replace(Arc::new(snapshot.clone()));
        *state = Some(snapshot);
    }
    let from = state.as_ref().map_or(0, |s| s.revision + 1);
    let mut stream = client
        .watch(
            root,
            Some(WatchOptions::new().with_prefix().with_start_revision(from)),
        )
        .await?;
    control.update(|s| s.etcd = Connection::Connected);
    metrics::etcd_connected(true);
    tracing::info!(revision = from - 1, "following etcd");
    while let Some(response) = stream.message().await? {
        if response.compact_revision() > 0 || response.canceled() {
            // What we missed is gone from etcd's history: start over from a get.
            tracing::warn!(
                compacted = response.compact_revision(),
                reason = response.cancel_reason(),
                "etcd watch cancelled; reading everything again"
            );
            *state = None;
            return Ok(());
        }
        let snapshot = state.as_mut().expect("a state before the watch");
        if response.events().is_empty() {
            continue;
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match event.event_type() {
                EventType::Put => {
                    snapshot
                        .kvs
                        .insert(key, (Bytes::copy_from_slice(kv.value()), kv.mod_revision()));
                }
                EventType::Delete => {
                    snapshot.kvs.remove(&key);
                }
            }
            snapshot.revision = snapshot.revision.max(kv.mod_revision());
        }
        out.send_replace(Arc::new(snapshot.clone()));
    }
    Ok(())
}
