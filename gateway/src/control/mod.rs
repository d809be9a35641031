//! The etcd control plane, gateway side. `follow` keeps a snapshot of every
//! key under the fleet's prefix (workers' registrations, the routing
//! document, plugins); `apply` turns each snapshot into the [`Live`] state
//! routing runs on. etcd being away changes nothing: the last state keeps
//! serving, and the watch resumes from its revision when etcd is back.
//!
//! [`Live`]: crate::live::Live

mod apply;
pub mod artifact;
mod follow;
mod status;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::live::Shared;
use crate::plugin::RETRY_TRANSIENT;

pub use status::{ConfigRefusal, Connection, Control, ControlStatus};

/// How long startup waits for etcd's state before serving the file's.
const FIRST_STATE_WAIT: Duration = Duration::from_secs(3);

/// Follows etcd and applies its changes to `live` until the tasks are
/// aborted. Returns once the first state is applied, or after a few seconds
/// without etcd (the file's config serves meanwhile).
pub async fn start(base: Config, live: Shared) -> (Arc<Control>, Vec<JoinHandle<()>>) {
    let control = Arc::new(Control::default());
    let root = protocol::control::Keys::new(&base.etcd.prefix).root();
    let (snapshots, mut changes) = watch::channel(Arc::new(follow::EtcdSnapshot::default()));
    changes.mark_unchanged();
    let follower = tokio::spawn(follow::run(
        base.etcd.endpoints.clone(),
        root,
        control.clone(),
        snapshots,
    ));
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
            let done = tokio::task::spawn_blocking(move || {
                working.apply(&snapshot);
                working
            })
            .await;
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
        tracing::warn!("etcd has not answered yet; serving this gateway's file until it does");
    }
    (control, vec![follower, applying])
}
