//! A feed: one path of one PState on one partition, evaluated once per commit that may have
//! changed it, its changes fanned out to every subscriber of that path.
//!
//! A feed keeps the selection it last evaluated (`current`), the newest events (`ring`, so a
//! reconnecting client resumes from its `Last-Event-ID` without a gap), and its subscribers'
//! bounded buffers. Commits reach it as snapshots from the partition's [`super::ChangeHub`];
//! an evaluator thread selects the path in each snapshot, in commit order, and sends the diff
//! from the previous selection. Invariants:
//! - every event's id names the committed state its data brings the subscriber to, and the
//!   events a subscriber receives, applied in order to its first value, give that state;
//! - when the feed falls behind by more than [`PENDING_MAX`] commits it evaluates only the
//!   newest snapshot: one event then covers several commits (still exact);
//! - a subscriber whose buffer is full is let go with a final `dropped` event; the feed never
//!   waits for a subscriber, and the partition's writer never waits for the feed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::ReadTransaction;
use serde_json::json;

use super::diff::{change_json, diff};
use crate::pstate::{self, Navigator, PStateStore};
use crate::value::{to_json, Value};

/// Snapshots a feed holds unevaluated; past it the oldest is dropped (coalescing).
pub const PENDING_MAX: usize = 64;
/// Events a feed keeps for resuming subscribers.
pub const RING_EVENTS_MAX: usize = 256;
/// Bytes of events a feed keeps for resuming subscribers.
pub const RING_BYTES_MAX: usize = 4 << 20;

/// One commit's state of a partition's store, shared by the feeds it concerns.
pub struct Snap {
    pub incarnation: u64,
    pub position: u64,
    pub txn: ReadTransaction,
}

/// One server-sent event, rendered once for every subscriber.
#[derive(Debug)]
pub struct Event {
    /// `value`, `diff`, `reset`, or a final `dropped` / `error` / `closing`.
    pub kind: &'static str,
    pub id: Option<String>,
    /// The SSE frame: `id:`, `event:`, `data:` lines and the blank line.
    pub frame: Bytes,
}

impl Event {
    pub fn new(kind: &'static str, id: Option<String>, data: &serde_json::Value) -> Arc<Event> {
        let mut frame = String::new();
        if let Some(id) = &id {
            frame.push_str(&format!("id: {id}\n"));
        }
        frame.push_str(&format!("event: {kind}\ndata: {data}\n\n"));
        Arc::new(Event {
            kind,
            id,
            frame: Bytes::from(frame),
        })
    }

    /// A final event: the subscription ends after it.
    pub fn end(kind: &'static str, code: &str, message: &str) -> Arc<Event> {
        Event::new(kind, None, &json!({"code": code, "message": message}))
    }
}

/// A subscriber as a feed sees it: a bounded buffer and where its final event goes.
pub struct Subscriber {
    pub tx: tokio::sync::mpsc::Sender<Arc<Event>>,
    /// Set when the feed lets the subscriber go (sent after what is buffered).
    pub end: Arc<OnceLock<Arc<Event>>>,
}

/// Where feeds with work are queued (the evaluator threads of [`super::Subscriptions`]).
pub type Scheduler = std::sync::mpsc::Sender<Arc<Feed>>;

/// The selection last evaluated.
struct Current {
    incarnation: u64,
    position: u64,
    values: Vec<Value>,
    /// The id of the last event that changed the selection (the state `values` is).
    id: String,
}

#[derive(Default)]
struct State {
    pending: VecDeque<Arc<Snap>>,
    /// Evaluate a fresh snapshot first (a new feed, or after a reset).
    fresh: bool,
    /// Why the next event is a `reset`.
    reset: Option<String>,
    current: Option<Current>,
    /// The newest diff/reset events, and the id of the state the first of them applies to.
    ring: VecDeque<Arc<Event>>,
    ring_bytes: usize,
    ring_from: Option<String>,
    subscribers: Vec<Subscriber>,
    /// Joined before the first evaluation, with their `Last-Event-ID`.
    waiting: Vec<(Subscriber, Option<String>)>,
    idle_since: Option<Instant>,
    failed: bool,
}

/// What a feed evaluates, and for whom.
#[derive(Debug, Clone)]
pub struct FeedSpec {
    pub module: String,
    pub pstate: String,
    pub path: Vec<Navigator>,
    /// The path's canonical JSON text (feeds are shared by equal paths).
    pub path_key: String,
    /// The encoded top-level key the path starts with (`None`: it reads across keys).
    pub top_key: Option<Vec<u8>>,
    pub partition: u32,
    pub values_max: usize,
    /// The largest event (its JSON), as `--answer-bytes-max` bounds a select's answer.
    pub bytes_max: usize,
}

/// See the module docs.
pub struct Feed {
    pub module: String,
    pub pstate: String,
    pub path_key: String,
    pub top_key: Option<Vec<u8>>,
    path: Vec<Navigator>,
    partition: u32,
    values_max: usize,
    bytes_max: usize,
    linger: Duration,
    store: Weak<PStateStore>,
    scheduler: Scheduler,
    scheduled: AtomicBool,
    state: Mutex<State>,
    events_sent: Arc<AtomicU64>,
}

impl Feed {
    /// A feed of `spec` on `store`, run by `scheduler`'s threads, kept `linger` after its
    /// last subscriber leaves.
    pub fn new(
        spec: FeedSpec,
        store: &Arc<PStateStore>,
        scheduler: Scheduler,
        linger: Duration,
    ) -> Arc<Feed> {
        let events_sent = crate::metrics::counter(
            "sluice_subscription_events_total",
            &[("module", &spec.module)],
        );
        Arc::new(Feed {
            module: spec.module,
            pstate: spec.pstate,
            path_key: spec.path_key,
            top_key: spec.top_key,
            path: spec.path,
            partition: spec.partition,
            values_max: spec.values_max,
            bytes_max: spec.bytes_max,
            linger,
            store: Arc::downgrade(store),
            scheduler,
            scheduled: AtomicBool::new(false),
            state: Mutex::new(State {
                fresh: true,
                ..State::default()
            }),
            events_sent,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("poisoned")
    }

    fn schedule(self: &Arc<Self>) {
        if !self.scheduled.swap(true, Ordering::AcqRel)
            && self.scheduler.send(Arc::clone(self)).is_err()
        {
            self.scheduled.store(false, Ordering::Release);
        }
    }

    /// Whether the hub may drop this feed: failed, or without subscribers for its linger.
    pub fn expired(&self, now: Instant) -> bool {
        let st = self.lock();
        st.failed
            || st
                .idle_since
                .is_some_and(|t| now.duration_since(t) >= self.linger)
    }

    /// A commit that may have changed the path (from the hub, on the writer's thread).
    pub fn offer(self: &Arc<Self>, snap: Arc<Snap>) {
        {
            let mut st = self.lock();
            if st.failed {
                return;
            }
            if st.pending.len() >= PENDING_MAX {
                st.pending.pop_front();
            }
            st.pending.push_back(snap);
        }
        self.schedule();
    }

    /// The partition's state was rebuilt: the next event is a `reset` with a fresh value.
    pub fn reset(self: &Arc<Self>, reason: &str) {
        {
            let mut st = self.lock();
            st.reset = Some(reason.to_string());
            st.fresh = true;
            st.pending.clear();
        }
        self.schedule();
    }

    /// Ends the feed: every subscriber gets a final `error` event.
    pub fn fail(&self, code: &str, message: &str) {
        let mut st = self.lock();
        st.failed = true;
        st.pending.clear();
        let end = Event::end("error", code, message);
        let st = &mut *st;
        let subs: Vec<Subscriber> = st
            .subscribers
            .drain(..)
            .chain(st.waiting.drain(..).map(|(s, _)| s))
            .collect();
        for s in subs {
            let _ = s.end.set(Arc::clone(&end));
        }
    }

    /// Adds a subscriber; its first event is the current value, or — with `last_event_id` —
    /// the events after that id, or a `reset` when they are no longer kept.
    pub fn join(
        self: &Arc<Self>,
        sub: Subscriber,
        last_event_id: Option<String>,
    ) -> Result<(), Subscriber> {
        let mut st = self.lock();
        if st.failed {
            return Err(sub);
        }
        st.idle_since = None;
        if st.current.is_none() {
            st.waiting.push((sub, last_event_id));
            drop(st);
            self.schedule();
            return Ok(());
        }
        let first = first_events(&st, last_event_id.as_deref(), self.partition);
        if send_all(&sub, &first) {
            self.events_sent
                .fetch_add(first.len() as u64, Ordering::Relaxed);
            st.subscribers.push(sub);
        }
        Ok(())
    }

    /// Evaluates what is pending (on an evaluator thread) until nothing is.
    pub fn run(self: &Arc<Self>) {
        loop {
            let job = {
                let mut st = self.lock();
                if st.failed {
                    st.pending.clear();
                    self.scheduled.store(false, Ordering::Release);
                    return;
                }
                if st.fresh {
                    st.fresh = false;
                    None
                } else if let Some(s) = st.pending.pop_front() {
                    Some(s)
                } else {
                    self.scheduled.store(false, Ordering::Release);
                    return;
                }
            };
            let Some(store) = self.store.upgrade() else {
                self.fail("module-deleted", "the module was deleted");
                return;
            };
            let snap = match job {
                Some(s) => s,
                None => match fresh_snap(&store) {
                    Ok(s) => Arc::new(s),
                    Err(e) => {
                        self.fail("storage", &format!("reading the committed state: {e}"));
                        return;
                    }
                },
            };
            if snap.incarnation != store.changes().incarnation() {
                continue; // taken before a reset; the fresh snapshot after it follows
            }
            match self.select(&store, &snap) {
                Ok(values) => {
                    if let Err(e) = self.integrate(&snap, values) {
                        self.fail(e.code, &e.message);
                        return;
                    }
                }
                Err(e) => {
                    self.fail(e.code, &e.message);
                    return;
                }
            }
        }
    }

    fn select(&self, store: &PStateStore, snap: &Snap) -> Result<Vec<Value>, pstate::AccessError> {
        let catalog = store.changes().catalog().ok_or_else(|| {
            pstate::AccessError::new("partition-recovering", "the partition has not started")
        })?;
        let values = pstate::select_in(
            store,
            &catalog,
            &self.pstate,
            &self.path,
            &snap.txn,
            self.values_max + 1,
        )?;
        if values.len() > self.values_max {
            return Err(pstate::AccessError::new(
                "result-too-large",
                format!(
                    "the path now selects more than the select_values_max limit of {} values",
                    self.values_max
                ),
            ));
        }
        Ok(values)
    }

    /// Turns one evaluation into events for the subscribers; an event over `bytes_max` ends
    /// the feed.
    fn integrate(&self, snap: &Snap, values: Vec<Value>) -> Result<(), pstate::AccessError> {
        let mut st = self.lock();
        let id = event_id(snap.incarnation, snap.position);
        let p = self.partition;
        let event = match (st.current.take(), st.reset.take()) {
            (Some(cur), None) if cur.incarnation == snap.incarnation => {
                if snap.position <= cur.position {
                    st.current = Some(cur);
                    return Ok(());
                }
                let changes = diff(&cur.values, &values);
                if changes.is_empty() {
                    st.current = Some(Current {
                        position: snap.position,
                        ..cur
                    });
                    return Ok(());
                }
                let changes: Vec<_> = changes.iter().map(change_json).collect();
                Some(Event::new(
                    "diff",
                    Some(id.clone()),
                    &json!({"partition": p, "position": snap.position, "changes": changes}),
                ))
            }
            (None, _) => None,
            (Some(_), reason) => Some(Event::new(
                "reset",
                Some(id.clone()),
                &json!({
                    "partition": p, "position": snap.position,
                    "values": values.iter().map(to_json).collect::<Vec<_>>(),
                    "reason": reason.unwrap_or_else(|| "the partition restarted".into()),
                }),
            )),
        };
        if let Some(e) = event.as_ref().filter(|e| e.frame.len() > self.bytes_max) {
            return Err(pstate::AccessError::new(
                "result-too-large",
                format!(
                    "a {} event of {} bytes would be over the answer_bytes_max limit of {} bytes; subscribe to a narrower path",
                    e.kind,
                    e.frame.len(),
                    self.bytes_max
                ),
            ));
        }
        st.current = Some(Current {
            incarnation: snap.incarnation,
            position: snap.position,
            values,
            id: id.clone(),
        });
        match &event {
            Some(e) if e.kind == "reset" => {
                st.ring.clear();
                st.ring_bytes = 0;
                st.ring_from = Some(id);
            }
            Some(e) => push_ring(&mut st, e),
            None => st.ring_from = Some(id),
        }
        let mut sent = 0u64;
        if let Some(e) = &event {
            let before = st.subscribers.len();
            st.subscribers
                .retain(|s| send_all(s, std::slice::from_ref(e)));
            sent += st.subscribers.len() as u64;
            if st.subscribers.len() < before && st.subscribers.is_empty() {
                st.idle_since = Some(Instant::now());
            }
        }
        let waiting = std::mem::take(&mut st.waiting);
        for (sub, last) in waiting {
            let first = first_events(&st, last.as_deref(), p);
            if send_all(&sub, &first) {
                sent += first.len() as u64;
                st.subscribers.push(sub);
            }
        }
        self.events_sent.fetch_add(sent, Ordering::Relaxed);
        Ok(())
    }

    /// A subscriber left (its connection closed).
    pub fn leave(&self) {
        let mut st = self.lock();
        st.subscribers.retain(|s| !s.tx.is_closed());
        st.waiting.retain(|(s, _)| !s.tx.is_closed());
        if st.subscribers.is_empty() && st.waiting.is_empty() {
            st.idle_since = Some(Instant::now());
        }
    }
}

/// `<incarnation as 8 hex digits>-<position>`.
pub fn event_id(incarnation: u64, position: u64) -> String {
    format!("{incarnation:08x}-{position}")
}

fn fresh_snap(store: &PStateStore) -> Result<Snap, redb::Error> {
    loop {
        let incarnation = store.changes().incarnation();
        let txn = store.begin_read()?;
        let position = crate::partition::progress::read_position(&txn)?;
        if store.changes().incarnation() == incarnation {
            return Ok(Snap {
                incarnation,
                position,
                txn,
            });
        }
    }
}

fn push_ring(st: &mut State, e: &Arc<Event>) {
    st.ring_bytes += e.frame.len();
    st.ring.push_back(Arc::clone(e));
    while st.ring.len() > RING_EVENTS_MAX || (st.ring_bytes > RING_BYTES_MAX && st.ring.len() > 1) {
        let old = st.ring.pop_front().expect("not empty");
        st.ring_bytes -= old.frame.len();
        st.ring_from = old.id.clone();
    }
}

/// What a subscriber joining now is sent first (see [`Feed::join`]).
fn first_events(st: &State, last: Option<&str>, partition: u32) -> Vec<Arc<Event>> {
    let cur = st.current.as_ref().expect("evaluated");
    let value = |kind, reason: Option<String>| {
        let mut data = json!({
            "partition": partition, "position": cur.position,
            "values": cur.values.iter().map(to_json).collect::<Vec<_>>(),
        });
        if let Some(r) = reason {
            data["reason"] = r.into();
        }
        vec![Event::new(kind, Some(cur.id.clone()), &data)]
    };
    let Some(last) = last else {
        return value("value", None);
    };
    if last == cur.id {
        return Vec::new();
    }
    if st.ring_from.as_deref() == Some(last) {
        return st.ring.iter().cloned().collect();
    }
    if let Some(i) = st.ring.iter().position(|e| e.id.as_deref() == Some(last)) {
        return st.ring.iter().skip(i + 1).cloned().collect();
    }
    value(
        "reset",
        Some(format!(
            "the changes after event `{last}` are no longer kept (the host or partition restarted, or they are too old)"
        )),
    )
}

/// Sends events to a subscriber; `false` lets it go (gone, or too slow: its buffer is full).
fn send_all(sub: &Subscriber, events: &[Arc<Event>]) -> bool {
    for e in events {
        match sub.tx.try_send(Arc::clone(e)) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return false,
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                let _ = sub.end.set(Event::end(
                    "dropped",
                    "subscriber-too-slow",
                    &format!(
                        "this subscriber fell {} events behind and was dropped; reconnect with Last-Event-ID to resume",
                        sub.tx.max_capacity()
                    ),
                ));
                crate::metrics::inc("sluice_subscription_drops_total", &[("reason", "too-slow")]);
                return false;
            }
        }
    }
    true
}
