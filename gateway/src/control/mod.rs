//! The etcd control plane, gateway side. `follow` keeps a snapshot of every
//! key under the fleet's prefix (workers' registrations, the routing
//! document, plugins, cordons); `apply` turns each snapshot into the
//! [`Live`] state routing runs on; `saved` keeps the last one applied on
//! disk. etcd being away changes nothing: the last state keeps serving, the
//! watch resumes from its revision when etcd is back, and a gateway started
//! meanwhile serves the saved state.
//!
//! [`Live`]: crate::live::Live

mod apply;
pub mod artifact;
mod follow;
mod report;
mod saved;
mod status;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::live::Shared;
use crate::plugin::RETRY_TRANSIENT;

pub use follow::EtcdSnapshot;
pub use status::{ConfigRefusal, Connection, Control, ControlStatus, SavedState};

/// How long startup waits for etcd's state before serving the file's.
const FIRST_STATE_WAIT: Duration = Duration::from_secs(3);

/// Follows etcd and applies its changes to `live` until the tasks are
/// aborted. Returns once the first state is applied, or after a few seconds
/// without etcd: then the saved state serves if there is one, else the
/// file's config. The snapshots it follows are also for the API keys.
pub async fn start(
    base: Config,
    live: Shared,
) -> (
    Arc<Control>,
    watch::Receiver<Arc<EtcdSnapshot>>,
    Vec<JoinHandle<()>>,
) {
    let control = Arc::new(Control::default());
    let keys = protocol::control::Keys::new(&base.etcd.prefix);
    let root = keys.root();
    // Random: two gateways on one host must not share a report.
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let reporter = tokio::spawn(report::run(
        base.etcd.endpoints.clone(),
        keys,
        id.clone(),
        control.clone(),
    ));
    control.update(|s| s.gateway_id = id);
    let saved_at = base.etcd.snapshot.clone();
    let (snapshots, mut changes) = watch::channel(Arc::new(follow::EtcdSnapshot::default()));
    changes.mark_unchanged();
    let follower = tokio::spawn(follow::run(
        base.etcd.endpoints.clone(),
        root,
        control.clone(),
        snapshots.clone(),
    ));
    // The newest revision saved, so each state is written once.
    let mut written = 0;
    let status = control.clone();
    let save_to = saved_at.clone();
    let (applied, mut first) = watch::channel(false);
    let mut applier = Some(apply::Applier::new(base, live, control.clone()));
    let applying = tokio::spawn(async move {
        // Also now and then without a change, so plugin loads and routing
        // documents refused for a reason that may pass (a starved machine)
        // are tried again.
        let mut retry = tokio::time::interval(RETRY_TRANSIENT);
        let mut applied_once = false;
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = retry.tick() => if !applied_once { continue },
            }
            let snapshot = changes.borrow_and_update().clone();
            let mut working = applier
                .take()
                .expect("the applier is back after each change");
            let (from_etcd, revision) = (!snapshot.from_disk, snapshot.revision);
            // Only etcd's own states are saved, each once.
            let save = save_to.clone().filter(|_| from_etcd && revision > written);
            let done = tokio::task::spawn_blocking(move || {
                working.apply(&snapshot);
                if let Some(path) = save {
                    if let Err(e) = saved::write(&path, &snapshot) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot save the etcd state");
                    }
                }
                working
            })
            .await;
            if from_etcd {
                written = written.max(revision);
                status.update(|s| s.from_saved_state = None);
            }
            match done {
                Ok(working) => applier = Some(working),
                Err(e) => {
                    tracing::error!(error = %e, "applying etcd state failed; the control plane stops here");
                    return;
                }
            }
            applied_once = true;
            applied.send_replace(true);
        }
    });
    if tokio::time::timeout(FIRST_STATE_WAIT, first.wait_for(|done| *done))
        .await
        .is_err()
    {
        match saved_at.as_deref().map(saved::read) {
            Some(Ok((snapshot, saved_at_ms))) => {
                let revision = snapshot.revision;
                tracing::warn!(revision, saved_at_ms, "etcd has not answered yet; serving the state saved at revision {revision} until it does");
                control.update(|s| s.from_saved_state = Some(SavedState { revision, saved_at_ms }));
                // Unless etcd answered meanwhile: its state wins.
                snapshots.send_if_modified(|current| {
                    let empty = current.revision == 0;
                    if empty {
                        *current = Arc::new(snapshot);
                    }
                    empty
                });
                let _ = tokio::time::timeout(FIRST_STATE_WAIT, first.wait_for(|done| *done)).await;
            }
            Some(Err(e)) => tracing::warn!(error = %e, "etcd has not answered yet and no saved state can be read; serving this gateway's file until it does"),
            None => tracing::warn!("etcd has not answered yet; serving this gateway's file until it does (set etcd.snapshot to serve the last known fleet instead)"),
        }
    }
    (
        control,
        snapshots.subscribe(),
        vec![follower, applying, reporter],
    )
}
