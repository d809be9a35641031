//! The bus between workers and gateways: publish, subscribe with NATS subject
//! wildcards, and request-reply. NATS for real deployments; in-process for the
//! embedded demo, tests and benches. Callers cannot tell them apart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

/// The first token of every subject, unless configured otherwise: the
/// gateway and its workers must agree on it.
pub const DEFAULT_SUBJECT_PREFIX: &str = "llmgw";

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid NATS URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("bus {op} on {subject} failed: {reason}")]
    Failed {
        op: &'static str,
        subject: String,
        reason: String,
    },
    #[error("no reply on {subject} within {timeout_ms} ms")]
    Timeout { subject: String, timeout_ms: u64 },
}

/// A handle on the bus; cheap to clone.
#[derive(Clone)]
pub enum Bus {
    Nats {
        client: async_nats::Client,
        connects: watch::Receiver<u64>,
    },
    Local(Arc<LocalBus>),
}

#[derive(Debug, Clone)]
pub struct Message {
    pub subject: String,
    pub payload: Bytes,
    /// Where a request wants its answer.
    pub reply: Option<String>,
}

pub struct Subscription(SubscriptionInner);

enum SubscriptionInner {
    Nats(async_nats::Subscriber),
    Local(mpsc::Receiver<Message>),
}

impl Subscription {
    /// The next message; `None` once the bus is gone.
    pub async fn next(&mut self) -> Option<Message> {
        match &mut self.0 {
            SubscriptionInner::Nats(s) => s.next().await.map(|m| Message {
                subject: m.subject.to_string(),
                payload: m.payload,
                reply: m.reply.map(|r| r.to_string()),
            }),
            SubscriptionInner::Local(rx) => rx.recv().await,
        }
    }
}

impl Bus {
    /// Connects to NATS in the background and keeps reconnecting: a gateway or
    /// worker starts and serves while NATS is down, and catches up when it returns.
    /// `url` may list a cluster's nodes, comma-separated: any of them will do,
    /// and a lost one is replaced by another.
    pub async fn nats(url: &str) -> Result<Bus, BusError> {
        let invalid = |reason: String| BusError::Url {
            url: url.to_string(),
            reason,
        };
        let servers = url
            .split(',')
            .map(|one| one.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(e.to_string()))?;
        let (tx, connects) = watch::channel(0u64);
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tx.send_modify(|n| *n += 1);
                            tracing::info!("bus connected");
                        }
                        async_nats::Event::Disconnected => tracing::warn!("bus disconnected"),
                        other => tracing::debug!(event = %other, "bus event"),
                    }
                }
            })
            .connect(servers)
            .await
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Bus::Nats { client, connects })
    }

    pub fn local() -> Bus {
        Bus::Local(Arc::new(LocalBus::default()))
    }

    /// Whether messages flow now.
    pub fn is_connected(&self) -> bool {
        match self {
            Bus::Nats { client, .. } => {
                client.connection_state() == async_nats::connection::State::Connected
            }
            Bus::Local(_) => true,
        }
    }

    /// Counts (re)connections; a change means messages may have been missed.
    pub fn connects(&self) -> watch::Receiver<u64> {
        match self {
            Bus::Nats { connects, .. } => connects.clone(),
            Bus::Local(local) => local.connects.subscribe(),
        }
    }

    pub async fn publish(&self, subject: String, payload: Bytes) -> Result<(), BusError> {
        match self {
            Bus::Nats { client, .. } => {
                client
                    .publish(subject.clone(), payload)
                    .await
                    .map_err(|e| BusError::Failed {
                        op: "publish",
                        subject,
                        reason: e.to_string(),
                    })
            }
            Bus::Local(local) => {
                local.deliver(Message {
                    subject,
                    payload,
                    reply: None,
                });
                Ok(())
            }
        }
    }

    /// Answers a request received as `to`.
    pub async fn reply(&self, to: &Message, payload: Bytes) -> Result<(), BusError> {
        match &to.reply {
            Some(reply) => self.publish(reply.clone(), payload).await,
            None => Ok(()),
        }
    }

    pub async fn subscribe(&self, subject: String) -> Result<Subscription, BusError> {
        match self {
            Bus::Nats { client, .. } => client
                .subscribe(subject.clone())
                .await
                .map(|s| Subscription(SubscriptionInner::Nats(s)))
                .map_err(|e| BusError::Failed {
                    op: "subscribe",
                    subject,
                    reason: e.to_string(),
                }),
            Bus::Local(local) => Ok(Subscription(SubscriptionInner::Local(
                local.subscribe(&subject),
            ))),
        }
    }

    pub async fn request(
        &self,
        subject: String,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BusError> {
        let timed_out = || BusError::Timeout {
            subject: subject.clone(),
            timeout_ms: timeout.as_millis() as u64,
        };
        match self {
            Bus::Nats { client, .. } => {
                match tokio::time::timeout(timeout, client.request(subject.clone(), payload)).await
                {
                    Ok(Ok(message)) => Ok(message.payload),
                    Ok(Err(e)) => Err(BusError::Failed {
                        op: "request",
                        subject,
                        reason: e.to_string(),
                    }),
                    Err(_) => Err(timed_out()),
                }
            }
            Bus::Local(local) => {
                let inbox = format!(
                    "_INBOX.{}",
                    local.next_inbox.fetch_add(1, Ordering::Relaxed)
                );
                let mut answers = local.subscribe(&inbox);
                local.deliver(Message {
                    subject: subject.clone(),
                    payload,
                    reply: Some(inbox),
                });
                match tokio::time::timeout(timeout, answers.recv()).await {
                    Ok(Some(message)) => Ok(message.payload),
                    _ => Err(timed_out()),
                }
            }
        }
    }
}

/// Messages a slow in-process subscriber may fall behind by before it loses
/// some, as a slow NATS consumer would; receivers detect the gap and resync.
const LOCAL_QUEUE: usize = 65_536;

/// A subscription's subject pattern, split into tokens, and its queue.
type LocalSubscriber = (Vec<String>, mpsc::Sender<Message>);

#[derive(Default)]
pub struct LocalBus {
    subscribers: Mutex<HashMap<u64, LocalSubscriber>>,
    next_id: AtomicU64,
    next_inbox: AtomicU64,
    connects: watch::Sender<u64>,
}

impl LocalBus {
    fn subscribe(&self, subject: &str) -> mpsc::Receiver<Message> {
        let (tx, rx) = mpsc::channel(LOCAL_QUEUE);
        let pattern = subject.split('.').map(str::to_string).collect();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.subscribers.lock().unwrap().insert(id, (pattern, tx));
        rx
    }

    fn deliver(&self, message: Message) {
        let tokens: Vec<&str> = message.subject.split('.').collect();
        self.subscribers.lock().unwrap().retain(|_, (pattern, tx)| {
            if !subject_matches(pattern, &tokens) {
                return !tx.is_closed();
            }
            match tx.try_send(message.clone()) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }
}

/// NATS matching: `*` is one token, a final `>` is one or more.
fn subject_matches(pattern: &[String], subject: &[&str]) -> bool {
    for (i, p) in pattern.iter().enumerate() {
        match p.as_str() {
            ">" => return subject.len() > i,
            "*" if i < subject.len() => {}
            token if subject.get(i) == Some(&token) => {}
            _ => return false,
        }
    }
    pattern.len() == subject.len()
}

/// Whether `token` can stand in a subject (pool names and worker ids do).
pub fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The subjects this project uses, under a configurable prefix.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

/// What a subject carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Kv,
    Load,
    Snapshot,
}

impl Subjects {
    pub fn new(prefix: &str) -> Subjects {
        Subjects {
            prefix: prefix.to_string(),
        }
    }

    fn name(topic: Topic) -> &'static str {
        match topic {
            Topic::Kv => "kv",
            Topic::Load => "load",
            Topic::Snapshot => "snapshot",
        }
    }

    pub fn worker(&self, topic: Topic, pool: &str, worker: &str) -> String {
        format!("{}.{}.{pool}.{worker}", self.prefix, Subjects::name(topic))
    }

    /// Where gateway replicas exchange what they admitted against shared
    /// rate limits.
    pub fn limits(&self) -> String {
        format!("{}.limits", self.prefix)
    }

    /// Every worker's messages of `topic`.
    pub fn all(&self, topic: Topic) -> String {
        format!("{}.{}.*.*", self.prefix, Subjects::name(topic))
    }

    /// The pool and worker a subject of `topic` names.
    pub fn parse<'a>(&self, topic: Topic, subject: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        let rest = rest
            .strip_prefix(Subjects::name(topic))?
            .strip_prefix('.')?;
        let (pool, worker) = rest.split_once('.')?;
        (valid_token(pool) && valid_token(worker)).then_some((pool, worker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_nats() {
        let p = |s: &str| s.split('.').map(str::to_string).collect::<Vec<_>>();
        let s = |s: &'static str| s.split('.').collect::<Vec<_>>();
        assert!(subject_matches(&p("a.*.c"), &s("a.b.c")));
        assert!(!subject_matches(&p("a.*.c"), &s("a.b.d")));
        assert!(!subject_matches(&p("a.*"), &s("a.b.c")));
        assert!(subject_matches(&p("a.>"), &s("a.b.c")));
        assert!(!subject_matches(&p("a.>"), &s("a")));
    }

    #[test]
    fn subjects_round_trip() {
        let subjects = Subjects::new(DEFAULT_SUBJECT_PREFIX);
        let s = subjects.worker(Topic::Kv, "pool-1", "w_2");
        assert_eq!(s, "llmgw.kv.pool-1.w_2");
        assert_eq!(subjects.parse(Topic::Kv, &s), Some(("pool-1", "w_2")));
        assert_eq!(subjects.parse(Topic::Load, &s), None);
        assert!(!valid_token("a.b") && !valid_token("") && !valid_token("a*"));
    }

    #[tokio::test]
    async fn local_bus_publishes_and_answers_requests() {
        let bus = Bus::local();
        let mut sub = bus.subscribe("x.*".to_string()).await.unwrap();
        bus.publish("x.1".to_string(), Bytes::from_static(b"hi"))
            .await
            .unwrap();
        bus.publish("y.1".to_string(), Bytes::from_static(b"no"))
            .await
            .unwrap();
        assert_eq!(sub.next().await.unwrap().payload, "hi");

        let responder = bus.clone();
        let mut questions = bus.subscribe("q".to_string()).await.unwrap();
        tokio::spawn(async move {
            let m = questions.next().await.unwrap();
            responder
                .reply(&m, Bytes::from_static(b"answer"))
                .await
                .unwrap();
        });
        let answer = bus
            .request("q".to_string(), Bytes::new(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer, "answer");
        assert!(bus
            .request(
                "nobody".to_string(),
                Bytes::new(),
                Duration::from_millis(10)
            )
            .await
            .is_err());
    }
}
