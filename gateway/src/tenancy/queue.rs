//! A pool's admission queue. With `admission.max_in_flight_per_worker`
//! set, the gateway sends each routable worker at most that many requests
//! at once; the rest wait here rather than in the workers' own first-come
//! queues, where a tenant flooding the pool would sit ahead of everyone.
//!
//! Waiters leave in priority order, and within a class fairly across
//! tenants by self-clocked fair queueing on tokens: each request gets a
//! finish tag `max(now, tenant's last tag) + its tokens`, the queue's clock
//! being the tag of the last request let through. A tenant that sent much
//! lately carries tags far ahead, so a quiet tenant's request overtakes its
//! backlog. A waiter that gives up (its client gone, `max_queue_wait_ms`
//! passed) leaves the queue.
//!
//! The cap holds back the tenants that take more than their share: one
//! holding fewer slots than its fair share (the slots divided among the
//! tenants with requests in flight or waiting) goes at once, even past the
//! cap, so a quiet tenant never waits for a flood's requests to finish.
//! Past the cap by at most the pool's slots again; in practice by a few,
//! which is why workers should take a few more than the cap.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::{ApiError, ErrorKind};
use tokio::sync::oneshot;

use super::keys::Priority;
use crate::metrics;

/// Waiters in the order they leave: class, finish tag, arrival.
type Order = (Priority, u64, u64);

/// A waiter's tenant, and how it is told its turn came.
type Place = (String, oneshot::Sender<()>);

#[derive(Default)]
struct State {
    in_flight: usize,
    /// Slots each tenant holds, and requests each has waiting.
    held: HashMap<String, usize>,
    queued: HashMap<String, usize>,
    /// Workers' room as last seen by an arrival.
    capacity: usize,
    waiting: BTreeMap<Order, Place>,
    /// Each tenant's last finish tag.
    tags: HashMap<String, u64>,
    clock: u64,
    arrivals: u64,
}

pub struct Queue {
    pool: String,
    state: Mutex<State>,
}

/// A place among the requests the pool's workers hold; given back on drop,
/// letting the next waiter through.
pub struct Slot {
    queue: Arc<Queue>,
    tenant: String,
}

/// How the queue is bounded.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_wait: Duration,
    pub max_length: usize,
}

/// Who waits, and how much work it brings.
pub struct Arrival<'a> {
    pub tenant: &'a str,
    pub priority: Priority,
    pub tokens: u64,
}

impl Queue {
    pub fn new(pool: &str) -> Arc<Queue> {
        Arc::new(Queue {
            pool: pool.to_string(),
            state: Mutex::default(),
        })
    }

    /// A slot now when `capacity` allows and nobody waits, else once it is
    /// this request's turn; an error when the queue is full or the wait
    /// too long.
    pub async fn enter(
        self: &Arc<Self>,
        capacity: usize,
        who: Arrival<'_>,
        bounds: Bounds,
    ) -> Result<Slot, ApiError> {
        let class = who.priority.as_str();
        let (order, granted) = {
            let mut state = self.state.lock().expect("queue lock");
            state.capacity = capacity;
            // Room that came with new workers goes to those waiting first.
            self.let_through(&mut state);
            let start = state
                .clock
                .max(state.tags.get(who.tenant).copied().unwrap_or(0));
            let finish = start.saturating_add(who.tokens.max(1));
            let free = state.waiting.is_empty() && state.in_flight < capacity;
            if free || state.under_share(who.tenant) {
                state.take(who.tenant);
                state.tags.insert(who.tenant.to_string(), finish);
                state.clock = start;
                metrics::queue_wait(&self.pool, class, Duration::ZERO);
                return Ok(self.slot(who.tenant));
            }
            if state.waiting.len() >= bounds.max_length {
                return Err(ApiError::new(
                    ErrorKind::Overloaded,
                    format!("the queue of pool `{}` is full; retry later", self.pool),
                ));
            }
            state.tags.insert(who.tenant.to_string(), finish);
            state.arrivals += 1;
            let order = (who.priority, finish, state.arrivals);
            let (tx, rx) = oneshot::channel();
            state.waiting.insert(order, (who.tenant.to_string(), tx));
            *state.queued.entry(who.tenant.to_string()).or_default() += 1;
            metrics::queue_length(&self.pool, class, self.count(&state, who.priority));
            (order, rx)
        };
        let waited = Instant::now();
        let mut waiter = Waiter {
            queue: self,
            tenant: who.tenant,
            order,
            granted,
            done: false,
        };
        let turn = tokio::time::timeout(bounds.max_wait, &mut waiter.granted).await;
        waiter.done = true;
        metrics::queue_wait(&self.pool, class, waited.elapsed());
        match turn {
            Ok(Ok(())) => Ok(self.slot(who.tenant)),
            _ => {
                // Let through meanwhile: the slot is ours after all.
                if waiter.leave() {
                    return Ok(self.slot(who.tenant));
                }
                Err(ApiError::new(
                    ErrorKind::Overloaded,
                    format!(
                        "waited {} ms in the queue of pool `{}`, every worker busy; retry later",
                        bounds.max_wait.as_millis(),
                        self.pool
                    ),
                ))
            }
        }
    }

    /// A slot already counted in the state.
    fn slot(self: &Arc<Self>, tenant: &str) -> Slot {
        Slot {
            queue: Arc::clone(self),
            tenant: tenant.to_string(),
        }
    }

    fn count(&self, state: &State, priority: Priority) -> usize {
        state
            .waiting
            .keys()
            .filter(|(p, _, _)| *p == priority)
            .count()
    }

    /// Lets waiters through while there is room; the lock is held.
    fn let_through(&self, state: &mut State) {
        while state.in_flight < state.capacity {
            let Some((order, (tenant, tx))) = state.waiting.pop_first() else {
                return;
            };
            state.unqueue(&tenant);
            metrics::queue_length(&self.pool, order.0.as_str(), self.count(state, order.0));
            // A waiter that is gone leaves its place to the next.
            if tx.send(()).is_ok() {
                state.take(&tenant);
                state.clock = state.clock.max(order.1);
            }
        }
    }
}

impl State {
    fn take(&mut self, tenant: &str) {
        self.in_flight += 1;
        *self.held.entry(tenant.to_string()).or_default() += 1;
    }

    fn give_back(&mut self, tenant: &str) {
        self.in_flight -= 1;
        if let Some(held) = self.held.get_mut(tenant) {
            *held -= 1;
            if *held == 0 {
                self.held.remove(tenant);
            }
        }
    }

    fn unqueue(&mut self, tenant: &str) {
        if let Some(queued) = self.queued.get_mut(tenant) {
            *queued -= 1;
            if *queued == 0 {
                self.queued.remove(tenant);
            }
        }
    }

    /// Whether `tenant` holds fewer slots than its fair share, counting it
    /// among the tenants with requests in flight or waiting.
    fn under_share(&self, tenant: &str) -> bool {
        let others = self
            .held
            .keys()
            .chain(self.queued.keys())
            .filter(|t| t.as_str() != tenant)
            .collect::<std::collections::HashSet<_>>()
            .len();
        let share = self.capacity / (others + 1);
        let held = self.held.get(tenant).copied().unwrap_or(0);
        held < share && self.in_flight < 2 * self.capacity
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.queue.state.lock().expect("queue lock");
        state.give_back(&self.tenant);
        self.queue.let_through(&mut state);
    }
}

/// A request in the queue; leaving it (dropped) takes it out.
struct Waiter<'a> {
    queue: &'a Arc<Queue>,
    tenant: &'a str,
    order: Order,
    granted: oneshot::Receiver<()>,
    /// Its wait is over, one way or another.
    done: bool,
}

impl Waiter<'_> {
    /// Out of the queue; true when it had been let through meanwhile and
    /// so holds a slot.
    fn leave(&mut self) -> bool {
        let mut state = self.queue.state.lock().expect("queue lock");
        if state.waiting.remove(&self.order).is_some() {
            state.unqueue(self.tenant);
            let count = self.queue.count(&state, self.order.0);
            metrics::queue_length(&self.queue.pool, self.order.0.as_str(), count);
            return false;
        }
        self.granted.try_recv().is_ok()
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        // The client went away while waiting: its place, or its slot, goes on.
        if !self.done && self.leave() {
            drop(self.queue.slot(self.tenant));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        max_wait: Duration::from_secs(5),
        max_length: 100,
    };

    fn who(tenant: &str, priority: Priority, tokens: u64) -> Arrival<'_> {
        Arrival {
            tenant,
            priority,
            tokens,
        }
    }

    /// Queues `arrivals` behind one held slot, then lets them through one
    /// at a time; the order they got in.
    async fn order_of(arrivals: Vec<(&'static str, Priority, u64)>) -> Vec<&'static str> {
        let queue = Queue::new("p");
        let held = queue
            .enter(1, who("first", Priority::Normal, 1), BOUNDS)
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (tenant, priority, tokens) in arrivals {
            let (queue, tx) = (queue.clone(), tx.clone());
            tokio::spawn(async move {
                let slot = queue
                    .enter(1, who(tenant, priority, tokens), BOUNDS)
                    .await
                    .unwrap();
                tx.send((tenant, slot)).unwrap();
            });
            // Arrivals in the order listed.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(tx);
        drop(held);
        let mut order = Vec::new();
        while let Some((tenant, slot)) = rx.recv().await {
            order.push(tenant);
            drop(slot);
        }
        order
    }

    #[tokio::test]
    async fn a_quiet_tenant_overtakes_a_noisy_backlog() {
        let mut arrivals = vec![("noisy", Priority::Normal, 100); 5];
        arrivals.push(("quiet", Priority::Normal, 100));
        let order = order_of(arrivals).await;
        assert_eq!(order[0], "noisy");
        assert_eq!(order[1], "quiet", "{order:?}");
    }

    #[tokio::test]
    async fn a_tenant_under_its_share_goes_past_the_cap() {
        let queue = Queue::new("p");
        let mut noisy = Vec::new();
        for _ in 0..4 {
            noisy.push(
                queue
                    .enter(4, who("noisy", Priority::Normal, 1), BOUNDS)
                    .await
                    .unwrap(),
            );
        }
        let waiting = {
            let queue = queue.clone();
            tokio::spawn(async move {
                queue
                    .enter(4, who("noisy", Priority::Normal, 1), BOUNDS)
                    .await
                    .map(drop)
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Two tenants: a share of two slots each; the quiet one holds none.
        let quiet = queue
            .enter(4, who("quiet", Priority::Normal, 1), BOUNDS)
            .await
            .unwrap();
        let again = queue
            .enter(4, who("quiet", Priority::Normal, 1), BOUNDS)
            .await
            .unwrap();
        assert_eq!(queue.state.lock().unwrap().in_flight, 6);
        assert_eq!(queue.state.lock().unwrap().waiting.len(), 1);
        // Past its share it waits like anyone.
        let short = Bounds {
            max_wait: Duration::from_millis(20),
            ..BOUNDS
        };
        assert!(queue
            .enter(4, who("quiet", Priority::Normal, 1), short)
            .await
            .is_err());
        drop((quiet, again));
        drop(noisy.pop());
        waiting.await.unwrap().unwrap();
        assert_eq!(queue.state.lock().unwrap().in_flight, 3);
    }

    #[tokio::test]
    async fn a_higher_class_goes_first() {
        let order = order_of(vec![
            ("a", Priority::Low, 1),
            ("b", Priority::Normal, 1),
            ("c", Priority::High, 1),
        ])
        .await;
        assert_eq!(order, ["c", "b", "a"]);
    }

    #[tokio::test]
    async fn a_full_queue_and_a_long_wait_are_refused() {
        let queue = Queue::new("p");
        let _held = queue
            .enter(1, who("a", Priority::Normal, 1), BOUNDS)
            .await
            .unwrap();
        let short = Bounds {
            max_wait: Duration::from_millis(20),
            max_length: 0,
        };
        let full = queue.enter(1, who("b", Priority::Normal, 1), short).await;
        assert!(full.err().unwrap().message.contains("full"));
        let short = Bounds {
            max_length: 1,
            ..short
        };
        let late = queue.enter(1, who("b", Priority::Normal, 1), short).await;
        assert!(late.err().unwrap().message.contains("waited 20 ms"));
        assert!(queue.state.lock().unwrap().waiting.is_empty());
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_leaves_the_queue() {
        let queue = Queue::new("p");
        let held = queue
            .enter(1, who("a", Priority::Normal, 1), BOUNDS)
            .await
            .unwrap();
        let waiting = {
            let queue = queue.clone();
            tokio::spawn(async move {
                queue
                    .enter(1, who("b", Priority::Normal, 1), BOUNDS)
                    .await
                    .map(drop)
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(queue.state.lock().unwrap().waiting.len(), 1);
        waiting.abort();
        let _ = waiting.await;
        assert!(queue.state.lock().unwrap().waiting.is_empty());
        drop(held);
        assert_eq!(queue.state.lock().unwrap().in_flight, 0);
        // The room is there for the next one.
        let _next = queue
            .enter(1, who("c", Priority::Normal, 1), BOUNDS)
            .await
            .unwrap();
    }
}
