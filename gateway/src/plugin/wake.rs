//! What ends the plugin watcher's wait between polls: a change under the
//! plugin directory reported by the OS (inotify on Linux), the poll
//! interval, or a stop.
//!
//! The events only wake the watcher; what changed is still found by its
//! poll, so a lost event (network and container mounts, a full event queue)
//! costs at most one interval, and a directory that cannot be watched is
//! simply polled.

use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

/// A deploy is a burst of events (create, writes, close, rename): the poll
/// waits until none came for this long, so the burst costs one poll.
const DEBOUNCE: Duration = Duration::from_millis(5);

pub(crate) enum Signal {
    Changed,
    Stop,
}

/// Sends [`Signal::Changed`] on `signals` for each change under `dir`
/// (recursively, folders created later included) until the returned watcher
/// is dropped. `None`, after a warning, when `dir` cannot be watched.
pub(crate) fn on_change(dir: &Path, signals: Sender<Signal>) -> Option<RecommendedWatcher> {
    let handler = move |event: notify::Result<Event>| {
        // An error may mean lost events: a poll finds what they were.
        if event.map_or(true, |event| changes(&event.kind)) {
            let _ = signals.send(Signal::Changed);
        }
    };
    let watched = notify::recommended_watcher(handler).and_then(|mut watcher| {
        watcher
            .watch(dir, RecursiveMode::Recursive)
            .map(|()| watcher)
    });
    match watched {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(
                dir = %dir.display(),
                %error,
                "plugin dir not watched for changes; polling it only"
            );
            None
        }
    }
}

/// Opening and reading a file (as every poll does) change nothing; closing
/// one written to does.
fn changes(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Waits until the next poll is due: after `interval`, or once a change has
/// settled. False when the watcher is to stop.
pub(crate) fn wait(signals: &Receiver<Signal>, interval: Duration) -> bool {
    match signals.recv_timeout(interval) {
        Ok(Signal::Changed) => settle(signals, interval),
        Err(RecvTimeoutError::Timeout) => true,
        Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => false,
    }
}

/// Waits for [`DEBOUNCE`] without a change, or `interval` at most: a file
/// written to without end must not hold back the polls.
fn settle(signals: &Receiver<Signal>, interval: Duration) -> bool {
    let until = Instant::now() + interval;
    loop {
        match signals.recv_timeout(DEBOUNCE) {
            Ok(Signal::Changed) if Instant::now() < until => continue,
            Ok(Signal::Changed) | Err(RecvTimeoutError::Timeout) => return true,
            Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn a_burst_of_changes_is_one_wake_up_and_a_stop_ends_the_wait() {
        let (send, signals) = mpsc::channel();
        for _ in 0..3 {
            send.send(Signal::Changed).unwrap();
        }
        let start = Instant::now();
        assert!(wait(&signals, Duration::from_secs(3600)));
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(signals.try_recv().is_err(), "the burst was consumed");
        send.send(Signal::Stop).unwrap();
        assert!(!wait(&signals, Duration::from_secs(3600)));
    }

    #[test]
    fn own_reads_do_not_wake() {
        use notify::event::{CreateKind, ModifyKind};
        assert!(!changes(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(changes(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(changes(&EventKind::Create(CreateKind::File)));
        assert!(changes(&EventKind::Modify(ModifyKind::Any)));
    }
}
