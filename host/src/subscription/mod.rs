//! Subscriptions (reactive queries): a client names a path of a PState on one partition and
//! is sent its value, then a diff after every commit that changed it (served as Server-Sent
//! Events by `api::subscribe`).
//!
//! Owns: the per-partition [`ChangeHub`] (told of each commit by the writer), [`feed::Feed`]s
//! (one per path and partition, shared by its subscribers), [`diff`] (the changes between two
//! selections) and [`Subscriptions`], the host-wide part: limits per host and per module, the
//! evaluator threads feeds run on, and the signal that ends every subscription when the host
//! stops. Invariants: the writer never waits for a subscriber (it hands snapshots over and goes
//! on); a subscriber is never sent a state that was not committed; the events it gets, applied
//! to its first value, equal a fresh `select` at the last event's id. The wire format and the
//! guarantees across restarts are in `docs/subscriptions.md`.

pub mod diff;
pub mod feed;
pub mod hub;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub use feed::{Event, Feed, FeedSpec};
pub use hub::ChangeHub;

use crate::pstate::PStateStore;

/// Threads that evaluate feeds (the host has 2 cores in mind; feeds are small selects).
const EVALUATOR_THREADS: usize = 2;

/// The limits of [`Subscriptions`] (flags of `sluice serve`).
#[derive(Debug, Clone)]
pub struct SubscriptionLimits {
    pub subscribers_max: usize,
    pub subscribers_per_module_max: usize,
    /// Events buffered per subscriber before it is dropped as too slow.
    pub buffer_events: usize,
    /// How often a quiet subscription gets a keep-alive comment.
    pub keepalive: Duration,
    /// How long a feed outlives its last subscriber (so a reconnect resumes without a gap).
    pub linger: Duration,
}

impl Default for SubscriptionLimits {
    fn default() -> Self {
        crate::config::Limits::default().subscriptions()
    }
}

/// A subscription refused by a limit.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refused {
    #[error("the host has {0} subscribers, its subscribers_max limit")]
    Host(usize),
    #[error("module `{module}` has {max} subscribers, the subscribers_per_module_max limit")]
    Module { module: String, max: usize },
    #[error("the host is stopping")]
    Closing,
}

/// The host's subscriptions; see the module docs.
pub struct Subscriptions {
    limits: SubscriptionLimits,
    scheduler: Mutex<std::sync::mpsc::Sender<Arc<Feed>>>,
    total: AtomicUsize,
    per_module: Mutex<HashMap<String, usize>>,
    closing: tokio::sync::watch::Sender<bool>,
}

impl Subscriptions {
    pub fn new(limits: SubscriptionLimits) -> Arc<Subscriptions> {
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Feed>>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..EVALUATOR_THREADS {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("sluice-feeds-{i}"))
                .spawn(move || loop {
                    let next = rx.lock().expect("poisoned").recv();
                    match next {
                        Ok(feed) => feed.run(),
                        Err(_) => return,
                    }
                })
                .expect("spawning a feed evaluator thread");
        }
        Arc::new(Subscriptions {
            limits,
            scheduler: Mutex::new(tx),
            total: AtomicUsize::new(0),
            per_module: Mutex::new(HashMap::new()),
            closing: tokio::sync::watch::channel(false).0,
        })
    }

    pub fn limits(&self) -> &SubscriptionLimits {
        &self.limits
    }

    /// Counts one subscriber of `module` in, if the limits allow.
    pub fn admit(self: &Arc<Self>, module: &str) -> Result<Permit, Refused> {
        if *self.closing.borrow() {
            return Err(Refused::Closing);
        }
        let mut per = self.per_module.lock().expect("poisoned");
        let n = per.entry(module.to_string()).or_insert(0);
        if *n >= self.limits.subscribers_per_module_max {
            return Err(Refused::Module {
                module: module.to_string(),
                max: self.limits.subscribers_per_module_max,
            });
        }
        let total = self.total.fetch_add(1, Ordering::AcqRel);
        if total >= self.limits.subscribers_max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Host(self.limits.subscribers_max));
        }
        *n += 1;
        Ok(Permit {
            subs: Arc::clone(self),
            module: module.to_string(),
        })
    }

    /// Subscribes to `spec` on the partition whose store is `store`.
    pub fn subscribe(
        &self,
        store: &Arc<PStateStore>,
        spec: FeedSpec,
        last_event_id: Option<String>,
        permit: Permit,
    ) -> Subscription {
        let (tx, rx) = tokio::sync::mpsc::channel(self.limits.buffer_events.max(1));
        let end = Arc::new(OnceLock::new());
        let sub = feed::Subscriber {
            tx,
            end: Arc::clone(&end),
        };
        let scheduler = self.scheduler.lock().expect("poisoned").clone();
        let at = (spec.pstate.clone(), spec.top_key.clone());
        let mut sub = Some(sub);
        let feed = loop {
            let feed = store.changes().feed(at.clone(), &spec.path_key, || {
                Feed::new(spec.clone(), store, scheduler.clone(), self.limits.linger)
            });
            // A feed that failed between the lookup and the join is dropped by the next
            // lookup; take a new one.
            match feed.join(sub.take().expect("set"), last_event_id.clone()) {
                Ok(()) => break feed,
                Err(s) => sub = Some(s),
            }
        };
        crate::metrics::inc("sluice_subscriptions_total", &[("module", &permit.module)]);
        Subscription {
            rx: Some(rx),
            end,
            feed,
            closing: self.closing.subscribe(),
            _permit: permit,
        }
    }

    /// The host is stopping: every subscription ends with a final `closing` event.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Subscribers per module, for `/metrics`.
    pub fn gauges(&self) -> Vec<crate::metrics::Gauge> {
        self.per_module
            .lock()
            .expect("poisoned")
            .iter()
            .map(|(m, n)| crate::metrics::Gauge {
                name: "sluice_subscribers",
                labels: vec![("module", m.clone())],
                value: *n as f64,
            })
            .collect()
    }

    /// Subscribers on the host now.
    pub fn count(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// One subscriber counted against the limits; counted out when dropped.
pub struct Permit {
    subs: Arc<Subscriptions>,
    module: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.subs.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(n) = self
            .subs
            .per_module
            .lock()
            .expect("poisoned")
            .get_mut(&self.module)
        {
            *n = n.saturating_sub(1);
        }
    }
}

/// A live subscription: its events, then its final event, if the feed ended it.
pub struct Subscription {
    rx: Option<tokio::sync::mpsc::Receiver<Arc<Event>>>,
    end: Arc<OnceLock<Arc<Event>>>,
    feed: Arc<Feed>,
    closing: tokio::sync::watch::Receiver<bool>,
    _permit: Permit,
}

/// What a subscription yields next.
pub enum Next {
    Event(Arc<Event>),
    /// The last event: the subscription is over.
    End(Arc<Event>),
}

impl Subscription {
    /// The next event; waits at most `keepalive` (then `None`: time for a keep-alive).
    pub async fn next(&mut self, keepalive: Duration) -> Option<Next> {
        let rx = self.rx.as_mut().expect("until dropped");
        if *self.closing.borrow() {
            return Some(Next::End(Event::end(
                "closing",
                "host-stopping",
                "the host is stopping; reconnect with Last-Event-ID",
            )));
        }
        tokio::select! {
            e = rx.recv() => Some(match e {
                Some(e) => Next::Event(e),
                None => Next::End(self.end.get().cloned().unwrap_or_else(|| {
                    Event::end("error", "subscription-ended", "the subscription ended")
                })),
            }),
            _ = self.closing.changed() => Some(Next::End(Event::end("closing", "host-stopping", "the host is stopping; reconnect with Last-Event-ID"))),
            () = tokio::time::sleep(keepalive) => None,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.rx.take());
        self.feed.leave();
    }
}
