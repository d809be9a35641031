//! Replicas enforce one budget per key and tenant: every
//! `limits.exchange_ms` each publishes what it admitted (and gave back)
//! since its last report on `{bus.subject_prefix}.limits`, and takes what
//! the others report from its own buckets. A lost report is spending the
//! others never see, as with any replica that is not heard from: the
//! budget is overshot by that much, never undercounted.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use protocol::Bus;
use serde::{Deserialize, Serialize};

use super::limits::{Limits, Spent};

#[derive(Debug, Serialize, Deserialize)]
struct Report {
    /// The replica that admitted it, which ignores its own reports.
    from: String,
    spent: Vec<Spent>,
}

/// Exchanges reports until the task is aborted.
pub async fn run(bus: Bus, subject: String, limits: Arc<Limits>, every: Duration) {
    let me = uuid::Uuid::new_v4().simple().to_string();
    let mut reports = loop {
        match bus.subscribe(subject.clone()).await {
            Ok(sub) => break sub,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hear other replicas' rate-limit reports; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let spent = limits.drain_pending();
                if spent.is_empty() {
                    continue;
                }
                let report = Report { from: me.clone(), spent };
                let payload = Bytes::from(serde_json::to_vec(&report).expect("a report serializes"));
                if let Err(e) = bus.publish(subject.clone(), payload).await {
                    tracing::debug!(error = %e, "rate-limit report not sent");
                }
            }
            message = reports.next() => {
                let Some(message) = message else { return };
                match serde_json::from_slice::<Report>(&message.payload) {
                    Ok(report) if report.from != me => limits.take_remote(&report.spent),
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "unreadable rate-limit report"),
                }
            }
        }
    }
}
