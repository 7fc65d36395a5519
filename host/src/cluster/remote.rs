//! A spread module's partitions on other hosts (CLUSTER.md §4.4–4.5): the wire between
//! hosts, over core NATS.
//!
//! A module placed per partition (`placement=partitions`, see `cluster::placement`) runs on
//! every host, each one running the partitions it owns. A partition another host owns is
//! *remote* here: its queue's receiving end is a [`Forwarder`] thread that sends what the
//! local partitions and the HTTP layer queue for it to its owner — the live host whose
//! heartbeats say it runs the partition at the highest epoch — on the subject
//! `slp.<module>.<incarnation>.<k>.<owner host>`, which only that host subscribes to while
//! it runs the partition ([`serve`] puts what arrives on the partition's real queue). A
//! paused or cut-off owner thus never takes a message meant for its successor. Rules:
//! - **appends** travel in batches (what was queued together, in queue order, so offsets
//!   follow it) and are answered on this host's reply inbox ([`Replies`]) once each append's
//!   own ack level is met on the owner. A batch nobody took (no owner known or subscribed: a
//!   failover) is sent again every [`RETRY_PAUSE`] until the failover bound, then answered
//!   [`ProcessingError::NotTaken`] (nothing written). A batch sent but not answered, when
//!   the host it went to stops being the partition's owner (seen dead, or replaced) or
//!   after [`ANSWER_WAIT_MAX`], is answered [`ProcessingError::AppendUnknown`]: never a false
//!   ack;
//! - **hop-protocol messages** (hops, confirmations, rewinds) are published with no answer
//!   (held, in order, while no owner is known, up to the failover bound). A lost one costs
//!   nothing: the source re-sends unconfirmed hops on a timer
//!   ([`crate::partition::Partition::resend_hops_every`]) and targets skip what they
//!   applied (watermarks), so each hop is still applied exactly once, in order per pair;
//! - a hop that belongs to a `full`-ack **event tree** carries a [`TreeRef`]: the target
//!   counts the hop's work (its handlers, and the hops they emit) in a tree of its own, and
//!   when that tree finishes it sends the outcome to the origin host (`slt.<host>`), which
//!   counts the hop off the real tree ([`RemoteTrees`]). A remote part that never answers
//!   (its host died) is dropped after [`TREE_WAIT_MAX`]: the ack then answers "outcome
//!   unknown", never a false success.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::jetstream::Nats;
use crate::partition::hops::Hop;
use crate::partition::tree::Tree;
use crate::partition::work::{AckLevel, AppendOutcome, PeerMessage, ProcessingError, Reply, Work};
use crate::pstate::{AccessError, Navigator};
use crate::value::Value;

/// The pause before a batch nobody took is sent again.
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long a taken batch of appends may wait for its answer.
pub const ANSWER_WAIT_MAX: Duration = Duration::from_secs(60);
/// How long a tree waits for the remote part of its work.
pub const TREE_WAIT_MAX: Duration = Duration::from_secs(60);
/// The most appends one message carries.
const BATCH_APPENDS_MAX: usize = 1024;

/// A spread module's partition: `(module, incarnation, partition)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionId {
    pub module: String,
    pub since: u64,
    pub partition: u32,
}

impl PartitionId {
    /// The subject partition's messages for `host` go to.
    pub fn subject(&self, host: &str) -> String {
        format!(
            "slp.{}.{}.{}.{host}",
            self.module, self.since, self.partition
        )
    }
}

/// Who owns which partition of a spread module, as this host sees it.
pub trait Owners: Send + Sync {
    /// The live host that says it runs partition `id`, at the highest epoch.
    fn owner(&self, id: &PartitionId) -> Option<String>;
}

impl Owners for super::membership::Membership {
    fn owner(&self, id: &PartitionId) -> Option<String> {
        self.hosts()
            .into_iter()
            .filter(|h| h.alive)
            .filter_map(|h| {
                let o = h
                    .owns
                    .iter()
                    .find(|o| o.module == id.module && o.version >= id.since)?;
                let epoch = o
                    .partitions
                    .iter()
                    .find(|x| x.partition == id.partition && x.state != "failed")?
                    .epoch;
                Some((epoch, h.host))
            })
            .max_by_key(|(epoch, _)| *epoch)
            .map(|(_, host)| host)
    }
}

/// The subject tree outcomes for `host` go to.
pub fn trees_subject(host: &str) -> String {
    format!("slt.{host}")
}

/// A message to a partition's owner.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToPartition {
    /// Answered on the message's reply subject with an [`Answer`].
    Appends(Vec<WireAppend>),
    Hop(WireHop),
    Confirmed {
        target: u32,
        next: u64,
    },
    Rewind {
        target: u32,
        from: u64,
    },
    /// A select from the partition's committed state, answered with a [`Selected`]; with a
    /// `pin`, from the snapshot the pin's query holds there ([`super::pinned`]).
    Select {
        pstate: String,
        path: Vec<Navigator>,
        limit: usize,
        #[serde(default)]
        pin: Option<Pin>,
    },
    /// The query ended: the snapshot it held of the partition is dropped. Not answered.
    EndQuery(QueryRef),
    /// A depot's first offset and end on the partition, answered with a [`Selected`] of
    /// the two.
    DepotBounds {
        depot: String,
    },
    /// The partition's dead letters of a topology, answered with a [`Selected`] of one
    /// JSON text (the entries `GET …/dead-letters` lists).
    DeadLetters {
        topology: String,
    },
    /// Runs a topology's dead letters again on the partition; a [`Selected`] of the counts
    /// (replayed, still failing).
    ReplayDeadLetters {
        topology: String,
    },
    /// Discards one dead letter; a [`Selected`] of its JSON text, or refused `missing` /
    /// `busy`.
    DiscardDeadLetter {
        topology: String,
        depot: String,
        offset: u64,
        by: String,
    },
}

/// A query running on host `host`, as the owners of the partitions it reads name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QueryRef {
    pub host: String,
    pub id: u64,
}

impl QueryRef {
    /// A new query's ref on `host`, unique also across restarts of the host (ids start from
    /// the time the process first made one).
    pub fn next(host: &str) -> Self {
        static NEXT: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();
        let next = NEXT.get_or_init(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            AtomicU64::new(now.as_nanos() as u64)
        });
        Self {
            host: host.to_string(),
            id: next.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// A query's select of a partition on another host: read from the snapshot the query holds
/// there, opened by its first read (`first`), held for `hold_ms` at most.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pin {
    pub query: QueryRef,
    pub first: bool,
    pub hold_ms: u64,
}

/// A dead-letter operation on a partition (see [`ToPartition`]).
pub enum DeadLetterOp<'a> {
    List,
    Replay,
    Discard {
        depot: &'a str,
        offset: u64,
        by: &'a str,
    },
}

/// The owner's answer to [`ToPartition::Select`]: the values, or the refusal's code and
/// message.
#[derive(Debug, Serialize, Deserialize)]
pub enum Selected {
    Values(Vec<Value>),
    Refused { code: String, message: String },
    NotOwner,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireAppend {
    pub depot: String,
    #[serde(with = "cbor_bytes")]
    pub record: Vec<u8>,
    pub ack: AckLevel,
    pub key: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireHop {
    pub source: u32,
    pub seq: u64,
    pub topology: String,
    pub handler: String,
    #[serde(with = "cbor_bytes")]
    pub payload: Vec<u8>,
    pub origin_depot: String,
    pub origin_offset: u64,
    pub tree: Option<TreeRef>,
}

/// A `full`-ack tree on the host `host`, as a hop to another host names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeRef {
    pub host: String,
    pub id: u64,
}

/// The owner's answer to [`ToPartition::Appends`]: one outcome per append (`None` for
/// `ack=none`), or `NotOwner` when the partition does not run there (any more).
#[derive(Debug, Serialize, Deserialize)]
pub enum Answer {
    Outcomes(Vec<Option<Result<AppendOutcome, ProcessingError>>>),
    NotOwner,
}

/// The outcome of a tree's remote part, sent to the tree's host.
#[derive(Debug, Serialize, Deserialize)]
pub struct TreeDone {
    pub id: u64,
    pub outcome: Result<AppendOutcome, ProcessingError>,
}

pub fn encode<T: Serialize>(v: &T) -> Bytes {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("encoding into memory");
    out.into()
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    ciborium::from_reader(bytes).map_err(|e| format!("undecodable message between hosts: {e}"))
}

/// `Vec<u8>` as one CBOR byte string (serde's default is an array of integers).
mod cbor_bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}

impl WireHop {
    /// The wire form of `hop` (its tree, if any, already registered as `tree`).
    pub fn new(hop: &Hop, tree: Option<TreeRef>) -> Self {
        Self {
            source: hop.source,
            seq: hop.seq,
            topology: hop.topology.clone(),
            handler: hop.handler.clone(),
            payload: hop.payload.clone(),
            origin_depot: hop.origin_depot.to_string(),
            origin_offset: hop.origin_offset,
            tree,
        }
    }

    /// The hop again, counted in `tree` (the target's stand-in for the origin's tree).
    pub fn into_hop(self, tree: Option<Arc<Tree>>) -> Hop {
        Hop {
            source: self.source,
            seq: self.seq,
            topology: self.topology,
            handler: self.handler,
            payload: self.payload,
            origin_depot: self.origin_depot.into(),
            origin_offset: self.origin_offset,
            tree,
        }
    }
}

/// The `full`-ack trees of this host whose work went on on other hosts, by id.
pub struct RemoteTrees {
    pub host: String,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, Waiting>>,
}

/// A tree waiting for its remote part: sent to `host` for partition `to`, at `since`.
struct Waiting {
    tree: Arc<Tree>,
    to: PartitionId,
    host: String,
    since: Instant,
}

impl RemoteTrees {
    pub fn new(host: &str) -> Self {
        Self {
            host: host.to_string(),
            next: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
        }
    }

    /// Keeps `tree` until its remote part, sent to `host` for partition `to`, answers; the
    /// reference a hop carries instead.
    pub fn register(&self, tree: Arc<Tree>, to: &PartitionId, host: &str) -> TreeRef {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.waiting.lock().expect("poisoned").insert(
            id,
            Waiting {
                tree,
                to: to.clone(),
                host: host.to_string(),
                since: Instant::now(),
            },
        );
        TreeRef {
            host: self.host.clone(),
            id,
        }
    }

    /// Counts a remote part off its tree: its results and failure are the tree's; an
    /// unknown outcome leaves the tree unfinished (dropped here, so it answers "outcome
    /// unknown" once nothing else holds it).
    pub fn done(&self, done: TreeDone) {
        let Some(Waiting { tree, .. }) = self.waiting.lock().expect("poisoned").remove(&done.id)
        else {
            return; // expired, or answered twice
        };
        match done.outcome {
            Ok(o) => {
                for (topology, v) in o.results {
                    tree.result(&topology, v);
                }
                tree.finish_one();
            }
            Err(ProcessingError::Topology {
                topology, error, ..
            }) => {
                tree.fail(&topology, error);
                tree.finish_one();
            }
            Err(_) => {}
        }
    }

    /// Drops the trees whose remote part has not answered within `max`, or whose host no
    /// longer owns the partition it went to (it died or was replaced: the hop is re-sent
    /// from the outbox without its tree, so the tree can never finish).
    pub fn expire(&self, max: Duration, owners: &dyn Owners) -> usize {
        let mut waiting = self.waiting.lock().expect("poisoned");
        let before = waiting.len();
        waiting.retain(|_, w| {
            w.since.elapsed() < max && owners.owner(&w.to).as_deref() == Some(w.host.as_str())
        });
        before - waiting.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.lock().expect("poisoned").len()
    }
}

/// A batch of appends waiting for its answer.
struct Pending {
    id: PartitionId,
    /// The host it was last sent to (`None`: no owner known yet).
    host: Option<String>,
    payload: Bytes,
    replies: Vec<Option<Reply>>,
    /// Until when a batch nobody took is sent again.
    retry_until: Instant,
    /// When it was last sent.
    sent: Instant,
}

/// This host's reply inbox for appends sent to other hosts (`<inbox>.<id>`).
pub struct Replies {
    nats: Nats,
    inbox: String,
    next: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
    failover_wait: Duration,
    owners: Arc<dyn Owners>,
}

impl Replies {
    /// Subscribes to a new inbox and answers what arrives on it (on the NATS runtime).
    pub async fn start(
        nats: Nats,
        failover_wait: Duration,
        owners: Arc<dyn Owners>,
    ) -> anyhow::Result<Arc<Self>> {
        let inbox = nats.client.new_inbox();
        let mut sub = nats.client.subscribe(format!("{inbox}.*")).await?;
        let me = Arc::new(Self {
            nats,
            inbox,
            next: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            failover_wait,
            owners,
        });
        let weak = Arc::downgrade(&me);
        me.nats.runtime.spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(me) = weak.upgrade() else { return };
                me.arrived(msg);
            }
        });
        let weak = Arc::downgrade(&me);
        me.nats.runtime.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let Some(me) = weak.upgrade() else { return };
                me.sweep();
            }
        });
        Ok(me)
    }

    /// Sends `appends` to partition `to`'s owner; `replies` are answered when it answers
    /// (see the module docs).
    pub fn send(&self, to: &PartitionId, appends: Vec<WireAppend>, replies: Vec<Option<Reply>>) {
        let request = self.next.fetch_add(1, Ordering::Relaxed);
        let payload = encode(&ToPartition::Appends(appends));
        let now = Instant::now();
        let host = self.owners.owner(to);
        self.pending.lock().expect("poisoned").insert(
            request,
            Pending {
                id: to.clone(),
                host: host.clone(),
                payload: payload.clone(),
                replies,
                retry_until: now + self.failover_wait,
                sent: now,
            },
        );
        // With no owner known yet, the sweep sends it once one is.
        if let Some(h) = host {
            self.publish(request, to.subject(&h), payload, Duration::ZERO);
        }
    }

    fn publish(&self, request: u64, subject: String, payload: Bytes, after: Duration) {
        let client = self.nats.client.clone();
        let reply = format!("{}.{request}", self.inbox);
        self.nats.runtime.spawn(async move {
            tokio::time::sleep(after).await;
            if let Err(e) = client.publish_with_reply(subject, reply, payload).await {
                tracing::warn!("sending appends to another host: {e}");
            }
        });
    }

    fn arrived(&self, msg: async_nats::Message) {
        let Some(id) = msg
            .subject
            .rsplit('.')
            .next()
            .and_then(|s| s.parse::<u64>().ok())
        else {
            return;
        };
        let no_responders = msg.status == Some(async_nats::StatusCode::NO_RESPONDERS);
        let answer = if no_responders {
            Answer::NotOwner
        } else {
            match decode::<Answer>(&msg.payload) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("{e}");
                    return;
                }
            }
        };
        let mut pending = self.pending.lock().expect("poisoned");
        let Some(mut p) = pending.remove(&id) else {
            return;
        };
        match answer {
            Answer::Outcomes(outcomes) => {
                drop(pending);
                for (reply, outcome) in p.replies.into_iter().zip(outcomes) {
                    if let (Some(reply), Some(outcome)) = (reply, outcome) {
                        let _ = reply.send(outcome);
                    }
                }
            }
            Answer::NotOwner if Instant::now() < p.retry_until => {
                // Nothing was taken: sent again after a pause, to whoever owns the
                // partition by then (or by the sweep, once some host does).
                p.host = self.owners.owner(&p.id);
                p.sent = Instant::now() + RETRY_PAUSE;
                let again = p
                    .host
                    .as_ref()
                    .map(|h| (p.id.subject(h), p.payload.clone()));
                pending.insert(id, p);
                drop(pending);
                if let Some((subject, payload)) = again {
                    self.publish(id, subject, payload, RETRY_PAUSE);
                }
            }
            Answer::NotOwner => {
                drop(pending);
                not_taken(
                    p,
                    "no host owns it now (a failover in progress); nothing was written",
                );
            }
        }
    }

    /// Sends the batches waiting for an owner to the owner once one is known (or gives
    /// them up at the failover bound: nothing was written), and answers "outcome unknown"
    /// for those whose host stopped owning the partition, or that are overdue.
    fn sweep(&self) {
        let now = Instant::now();
        let mut send = Vec::new();
        let mut unknown = Vec::new();
        let mut untaken = Vec::new();
        {
            let mut pending = self.pending.lock().expect("poisoned");
            let ids: Vec<u64> = pending.keys().copied().collect();
            for id in ids {
                let p = pending.get_mut(&id).expect("listed");
                if p.sent > now {
                    continue; // a retry on its way
                }
                let owner = self.owners.owner(&p.id);
                match (&p.host, owner) {
                    (None, Some(h)) => {
                        send.push((id, p.id.subject(&h), p.payload.clone()));
                        p.host = Some(h);
                        p.sent = now;
                    }
                    (None, None) if now >= p.retry_until => {
                        untaken.extend(pending.remove(&id));
                    }
                    (None, None) => {}
                    (Some(sent_to), owner) => {
                        let moved = owner.as_ref() != Some(sent_to);
                        if moved || now.saturating_duration_since(p.sent) > ANSWER_WAIT_MAX {
                            unknown.extend(pending.remove(&id));
                        }
                    }
                }
            }
        }
        for (id, subject, payload) in send {
            self.publish(id, subject, payload, Duration::ZERO);
        }
        for p in untaken {
            not_taken(
                p,
                "no host owns it now (a failover in progress); nothing was written",
            );
        }
        for p in unknown {
            let partition = p.id.partition;
            let host = p.host.unwrap_or_default();
            for reply in p.replies.into_iter().flatten() {
                let _ = reply.send(Err(ProcessingError::AppendUnknown {
                    partition,
                    offset: None,
                    reason: format!("host `{host}`, which owned the partition, took the append and did not answer (it died, was replaced or is overdue)"),
                }));
            }
        }
    }
}

fn not_taken(p: Pending, reason: &str) {
    for reply in p.replies.into_iter().flatten() {
        let _ = reply.send(Err(ProcessingError::NotTaken {
            partition: p.id.partition,
            reason: reason.to_string(),
            busy: false,
        }));
    }
}

/// What a remote partition's forwarder needs.
pub struct Link {
    pub nats: Nats,
    pub replies: Arc<Replies>,
    pub trees: Arc<RemoteTrees>,
    pub owners: Arc<dyn Owners>,
    /// How long a read waits for a partition that no host owns (a failover).
    pub failover_wait: Duration,
}

/// How long one select on another host may take.
const SELECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Link {
    /// Selects from the committed state of partition `p` on the host that owns it.
    /// Blocking: call it off the NATS runtime.
    pub fn select(
        &self,
        id: &PartitionId,
        pstate: &str,
        path: &[Navigator],
        limit: usize,
    ) -> Result<Vec<Value>, AccessError> {
        self.read(
            id,
            ToPartition::Select {
                pstate: pstate.to_string(),
                path: path.to_vec(),
                limit,
                pin: None,
            },
        )
    }

    /// A query's select of partition `p` on the host that owns it, from the snapshot the
    /// query holds there ([`super::pinned`]); also the host that answered. Blocking.
    pub fn select_pinned(
        &self,
        id: &PartitionId,
        pstate: &str,
        path: &[Navigator],
        limit: usize,
        pin: Pin,
    ) -> Result<(Vec<Value>, String), AccessError> {
        self.read_at(
            id,
            ToPartition::Select {
                pstate: pstate.to_string(),
                path: path.to_vec(),
                limit,
                pin: Some(pin),
            },
        )
    }

    /// Tells `host` that `query` ended: the snapshot it held of partition `id` is dropped
    /// (fire and forget: the hold expires anyway).
    pub fn end_query(&self, id: &PartitionId, host: &str, query: QueryRef) {
        let (client, subject) = (self.nats.client.clone(), id.subject(host));
        let payload = encode(&ToPartition::EndQuery(query));
        self.nats.runtime.spawn(async move {
            let _ = client.publish(subject, payload).await;
        });
    }

    /// `depot`'s `(start, end)` offsets on partition `id`, from the host that owns it.
    /// Blocking.
    pub fn depot_bounds(&self, id: &PartitionId, depot: &str) -> Result<(u64, u64), AccessError> {
        let v = self.read(
            id,
            ToPartition::DepotBounds {
                depot: depot.to_string(),
            },
        )?;
        let n = |i: usize| {
            v.get(i)
                .and_then(crate::value::as_i64)
                .and_then(|x| u64::try_from(x).ok())
        };
        match (n(0), n(1)) {
            (Some(start), Some(end)) => Ok((start, end)),
            _ => Err(AccessError::new(
                "partition-unavailable",
                "an undecodable answer from the partition's host",
            )),
        }
    }

    /// A dead-letter operation on partition `id`'s `topology`, on the host that owns it
    /// (see [`ToPartition::DeadLetters`] and after it for the answers). Blocking.
    pub fn dead_letters(
        &self,
        id: &PartitionId,
        topology: &str,
        op: DeadLetterOp<'_>,
    ) -> Result<Vec<Value>, AccessError> {
        let topology = topology.to_string();
        let message = match op {
            DeadLetterOp::List => ToPartition::DeadLetters { topology },
            DeadLetterOp::Replay => ToPartition::ReplayDeadLetters { topology },
            DeadLetterOp::Discard { depot, offset, by } => ToPartition::DiscardDeadLetter {
                topology,
                depot: depot.to_string(),
                offset,
                by: by.to_string(),
            },
        };
        self.read(id, message)
    }

    /// A read of partition `id` on the host that owns it (retried while no host does, up to
    /// the failover bound).
    fn read(&self, id: &PartitionId, message: ToPartition) -> Result<Vec<Value>, AccessError> {
        self.read_at(id, message).map(|(values, _)| values)
    }

    /// [`Self::read`], with the host that answered.
    fn read_at(
        &self,
        id: &PartitionId,
        message: ToPartition,
    ) -> Result<(Vec<Value>, String), AccessError> {
        let p = id.partition;
        let payload = encode(&message);
        let deadline = Instant::now() + self.failover_wait;
        loop {
            let Some(host) = self.owners.owner(id) else {
                if Instant::now() >= deadline {
                    return Err(AccessError::new(
                        "partition-unavailable",
                        format!("no host owns partition {p} now (a failover in progress); retry"),
                    ));
                }
                std::thread::sleep(RETRY_PAUSE);
                continue;
            };
            let client = self.nats.client.clone();
            let (subject, payload) = (id.subject(&host), payload.clone());
            let answer = self.nats.runtime.block_on(async move {
                tokio::time::timeout(SELECT_TIMEOUT, client.request(subject, payload)).await
            });
            let selected = match answer {
                Err(_) => {
                    return Err(AccessError::new(
                        "partition-unavailable",
                        format!("partition {p}'s owner did not answer within {SELECT_TIMEOUT:?}"),
                    ))
                }
                Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    Selected::NotOwner
                }
                Ok(Err(e)) => {
                    return Err(AccessError::new(
                        "partition-unavailable",
                        format!("reading partition {p} on its host: {e}"),
                    ))
                }
                Ok(Ok(msg)) => decode::<Selected>(&msg.payload)
                    .map_err(|e| AccessError::new("partition-unavailable", e))?,
            };
            match selected {
                Selected::Values(v) => return Ok((v, host)),
                Selected::Refused { code, message } => {
                    return Err(AccessError::new(intern(&code), message))
                }
                Selected::NotOwner if Instant::now() < deadline => std::thread::sleep(RETRY_PAUSE),
                Selected::NotOwner => {
                    return Err(AccessError::new(
                        "partition-unavailable",
                        format!("no host owns partition {p} now (a failover in progress); retry"),
                    ))
                }
            }
        }
    }
}

/// The `&'static` code for a refusal's code from another host (codes are a small fixed
/// set, so each is kept once).
fn intern(code: &str) -> &'static str {
    static CODES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut codes = CODES.lock().expect("poisoned");
    if let Some(c) = codes.iter().find(|c| **c == code) {
        return c;
    }
    let c: &'static str = Box::leak(code.to_string().into_boxed_str());
    codes.push(c);
    c
}

/// The receiving end of a remote partition's queue: sends what is queued to its owner.
pub struct Forwarder {
    pub link: Arc<Link>,
    pub id: PartitionId,
    /// The module's hop counts per partition queue (hops leave it when sent on).
    pub hops_queued: Arc<Vec<AtomicUsize>>,
    /// The remote partition's count of queued appends.
    pub queued_appends: Arc<AtomicUsize>,
}

/// Hop-protocol messages waiting for the partition's owner to be known, oldest first.
type Held = std::collections::VecDeque<(Instant, PeerMessage)>;

impl Forwarder {
    /// Runs until the queue closes or a `Stop` arrives. Hop-protocol messages queued while
    /// no owner is known (a failover, or the owner's first heartbeat not seen yet) are held
    /// and sent, in order, once one is, up to the failover bound: a hop's `full`-ack tree
    /// then still finishes, instead of answering "outcome unknown" for a moment's gap.
    pub fn run(self, rx: Receiver<Work>) {
        let mut held = Held::new();
        loop {
            let first = if held.is_empty() {
                match rx.recv() {
                    Ok(w) => w,
                    Err(_) => return,
                }
            } else {
                match rx.recv_timeout(RETRY_PAUSE) {
                    Ok(w) => w,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        self.send_held(&mut held);
                        continue;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
            };
            let mut work = vec![first];
            while work.len() < BATCH_APPENDS_MAX {
                match rx.try_recv() {
                    Ok(w) => work.push(w),
                    Err(_) => break,
                }
            }
            let stop = self.forward(work, &mut held);
            self.send_held(&mut held);
            if stop {
                return;
            }
        }
    }

    /// Sends one drain of the queue on (hop-protocol messages into `held`); true at `Stop`.
    fn forward(&self, work: Vec<Work>, held: &mut Held) -> bool {
        let mut appends = Vec::new();
        let mut replies = Vec::new();
        let mut stop = false;
        for w in work {
            match w {
                Work::Append {
                    depot,
                    record,
                    ack,
                    reply,
                    key,
                } => {
                    appends.push(WireAppend {
                        depot: depot.to_string(),
                        record,
                        ack,
                        key: key.map(|k| k.to_string()),
                    });
                    replies.push(reply);
                }
                Work::Peer(m) => {
                    if matches!(m, PeerMessage::Hop(_)) {
                        if let Some(n) = self.hops_queued.get(self.id.partition as usize) {
                            n.fetch_sub(1, Ordering::AcqRel);
                        }
                    }
                    held.push_back((Instant::now(), m));
                }
                Work::Stop => stop = true,
                Work::Batch { .. } => {}
                Work::ReplayDeadLetters { topology, reply } => {
                    let (link, id) = (Arc::clone(&self.link), self.id.clone());
                    // Off this thread: the queue's other messages do not wait for it.
                    std::thread::spawn(move || {
                        let _ = reply.send(replay_there(&link, &id, &topology));
                    });
                }
                Work::DiscardDeadLetter {
                    topology,
                    depot,
                    offset,
                    by,
                    reply,
                } => {
                    let (link, id) = (Arc::clone(&self.link), self.id.clone());
                    std::thread::spawn(move || {
                        let _ =
                            reply.send(discard_there(&link, &id, &topology, &depot, offset, &by));
                    });
                }
            }
        }
        if !appends.is_empty() {
            self.queued_appends
                .fetch_sub(appends.len(), Ordering::AcqRel);
            self.link.replies.send(&self.id, appends, replies);
        }
        stop
    }

    /// Sends the held messages, in order, if the partition's owner is known; drops those
    /// held past the failover bound (the source re-sends its hops; a tree dropped with its
    /// hop answers "outcome unknown" once nothing else holds it).
    fn send_held(&self, held: &mut Held) {
        if held.is_empty() {
            return;
        }
        let owner = self.link.owners.owner(&self.id);
        drain_held(
            held,
            owner.as_deref(),
            self.link.failover_wait,
            |host, m| self.publish(host, m),
        );
    }

    /// Publishes one hop-protocol message to `host`, the partition's owner (a hop's tree
    /// registered to wait for its outcome from there).
    fn publish(&self, host: &str, m: PeerMessage) {
        let message = match m {
            PeerMessage::Hop(hop) => {
                let tree = hop
                    .tree
                    .clone()
                    .map(|t| self.link.trees.register(t, &self.id, host));
                ToPartition::Hop(WireHop::new(&hop, tree))
            }
            PeerMessage::Confirmed { target, next } => ToPartition::Confirmed { target, next },
            PeerMessage::Rewind { target, from } => ToPartition::Rewind { target, from },
        };
        let client = self.link.nats.client.clone();
        let subject = self.id.subject(host);
        let payload = encode(&message);
        // In order: each publish is queued on the client before the next one.
        let sent = self
            .link
            .nats
            .runtime
            .block_on(async move { client.publish(subject, payload).await });
        if let Err(e) = sent {
            tracing::debug!("sending a hop message to another host: {e} (re-sent later)");
        }
    }
}

/// Sends `held` in order to `owner` if one is known (emptying it), else drops the messages
/// held for `wait` or longer and keeps the rest.
fn drain_held(
    held: &mut Held,
    owner: Option<&str>,
    wait: Duration,
    mut send: impl FnMut(&str, PeerMessage),
) {
    while let Some((since, _)) = held.front() {
        match owner {
            Some(host) => {
                let (_, m) = held.pop_front().expect("a front");
                send(host, m);
            }
            None if since.elapsed() >= wait => {
                held.pop_front();
            }
            None => break,
        }
    }
}

/// Re-runs `topology`'s dead letters on partition `id`'s host: (replayed, still failing).
fn replay_there(link: &Link, id: &PartitionId, topology: &str) -> Result<(u64, u64), String> {
    let v = link
        .dead_letters(id, topology, DeadLetterOp::Replay)
        .map_err(|e| e.message)?;
    let n = |i: usize| {
        v.get(i)
            .and_then(crate::value::as_i64)
            .and_then(|x| u64::try_from(x).ok())
    };
    n(0).zip(n(1))
        .ok_or_else(|| "an undecodable answer from the partition's host".to_string())
}

/// Discards one dead letter on partition `id`'s host.
fn discard_there(
    link: &Link,
    id: &PartitionId,
    topology: &str,
    depot: &str,
    offset: u64,
    by: &str,
) -> Result<crate::partition::dead_letters::Discard, String> {
    use crate::partition::dead_letters::{DeadLetter, Discard};
    let op = DeadLetterOp::Discard { depot, offset, by };
    match link.dead_letters(id, topology, op) {
        Ok(v) => {
            let d = match v.first() {
                Some(Value::Text(t)) => serde_json::from_str::<serde_json::Value>(t).ok(),
                _ => None,
            }
            .ok_or_else(|| "an undecodable answer from the partition's host".to_string())?;
            let text = |k: &str| d[k].as_str().unwrap_or_default().to_string();
            Ok(Discard::Done(DeadLetter::new(
                topology,
                &text("depot"),
                d["offset"].as_u64().unwrap_or(offset),
                &text("code"),
                &text("error"),
                0,
            )))
        }
        Err(e) if e.code == "missing" => Ok(Discard::Missing),
        Err(e) if e.code == "busy" => Ok(Discard::Busy),
        Err(e) => Err(e.message),
    }
}

/// Where the owner's side puts what arrives for one of its partitions.
pub trait PartitionInbox: Send + Sync {
    /// Queues the appends on partition `p`, answering each at its ack level; `None` if `p`
    /// does not run here.
    #[allow(clippy::type_complexity)]
    fn appends(
        &self,
        p: u32,
        appends: Vec<WireAppend>,
    ) -> Option<Vec<Option<tokio::sync::oneshot::Receiver<Result<AppendOutcome, ProcessingError>>>>>;
    /// Queues a hop-protocol message on partition `p` (dropped if `p` does not run here:
    /// its source sends it again).
    fn peer(&self, p: u32, message: PeerMessage);
    /// A tree standing in, on this host, for the origin's tree `r`; its outcome goes back.
    fn tree(&self, p: u32, r: TreeRef, offset: u64) -> Option<Arc<Tree>>;
    /// A dead-letter operation on partition `p`'s `topology`: answered as
    /// [`ToPartition::DeadLetters`] and the others say; `None` if `p` does not run here.
    /// Blocking.
    fn dead_letters(
        &self,
        p: u32,
        topology: &str,
        op: DeadLetterOp<'_>,
    ) -> Option<Result<Vec<Value>, AccessError>>;
    /// `depot`'s `(start, end)` offsets on partition `p`; `None` if `p` does not run here.
    /// Blocking.
    fn depot_bounds(&self, p: u32, depot: &str) -> Option<Result<(u64, u64), AccessError>>;
    /// Selects from partition `p`'s committed state, or with a `pin` from the snapshot its
    /// query holds ([`super::pinned`]); `None` if `p` does not run here. Blocking.
    fn select(
        &self,
        p: u32,
        pstate: &str,
        path: &[Navigator],
        limit: usize,
        pin: Option<&Pin>,
    ) -> Option<Result<Vec<Value>, AccessError>>;
    /// A query reading partition `p` ended: drops the snapshot it held.
    fn end_query(&self, p: u32, query: &QueryRef);
}

/// The owner's side of partition `p`: takes its subject's messages until aborted.
pub async fn serve(
    nats: Nats,
    subject: String,
    p: u32,
    inbox: Arc<dyn PartitionInbox>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut sub = nats.client.subscribe(subject.clone()).await?;
    let client = nats.client.clone();
    Ok(nats.runtime.spawn(async move {
        while let Some(msg) = sub.next().await {
            let m = match decode::<ToPartition>(&msg.payload) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(subject, "{e}");
                    continue;
                }
            };
            match m {
                ToPartition::Appends(appends) => {
                    let Some(reply) = msg.reply.clone() else {
                        continue;
                    };
                    let answer = inbox.appends(p, appends);
                    let client = client.clone();
                    tokio::spawn(async move {
                        let answer = match answer {
                            None => Answer::NotOwner,
                            Some(waits) => {
                                let mut outcomes = Vec::with_capacity(waits.len());
                                for w in waits {
                                    outcomes.push(match w {
                                        None => None,
                                        Some(rx) => Some(rx.await.unwrap_or_else(|_| {
                                            Err(ProcessingError::NotTaken {
                                                partition: p,
                                                reason: "the partition stopped before answering"
                                                    .into(),
                                                busy: false,
                                            })
                                        })),
                                    });
                                }
                                Answer::Outcomes(outcomes)
                            }
                        };
                        let _ = client.publish(reply, encode(&answer)).await;
                    });
                }
                ToPartition::Hop(h) => {
                    let tree = h
                        .tree
                        .clone()
                        .and_then(|r| inbox.tree(p, r, h.origin_offset));
                    inbox.peer(p, PeerMessage::Hop(h.into_hop(tree)));
                }
                ToPartition::Confirmed { target, next } => {
                    inbox.peer(p, PeerMessage::Confirmed { target, next })
                }
                ToPartition::Rewind { target, from } => {
                    inbox.peer(p, PeerMessage::Rewind { target, from })
                }
                ToPartition::EndQuery(query) => inbox.end_query(p, &query),
                m @ (ToPartition::Select { .. }
                | ToPartition::DepotBounds { .. }
                | ToPartition::DeadLetters { .. }
                | ToPartition::ReplayDeadLetters { .. }
                | ToPartition::DiscardDeadLetter { .. }) => {
                    let Some(reply) = msg.reply.clone() else {
                        continue;
                    };
                    let (inbox, client) = (Arc::clone(&inbox), client.clone());
                    tokio::spawn(async move {
                        let read =
                            tokio::task::spawn_blocking(move || read_here(&*inbox, p, m)).await;
                        let answer = match read {
                            Ok(None) => Selected::NotOwner,
                            Ok(Some(Ok(values))) => Selected::Values(values),
                            Ok(Some(Err(e))) => Selected::Refused {
                                code: e.code.to_string(),
                                message: e.message,
                            },
                            Err(e) => Selected::Refused {
                                code: "internal".into(),
                                message: format!("the read failed: {e}"),
                            },
                        };
                        let _ = client.publish(reply, encode(&answer)).await;
                    });
                }
            }
        }
    }))
}

/// Answers a read of partition `p` here.
fn read_here(
    inbox: &dyn PartitionInbox,
    p: u32,
    m: ToPartition,
) -> Option<Result<Vec<Value>, AccessError>> {
    match m {
        ToPartition::Select {
            pstate,
            path,
            limit,
            pin,
        } => inbox.select(p, &pstate, &path, limit, pin.as_ref()),
        ToPartition::DepotBounds { depot } => inbox.depot_bounds(p, &depot).map(|r| {
            r.map(|(start, end)| vec![Value::Integer(start.into()), Value::Integer(end.into())])
        }),
        ToPartition::DeadLetters { topology } => {
            inbox.dead_letters(p, &topology, DeadLetterOp::List)
        }
        ToPartition::ReplayDeadLetters { topology } => {
            inbox.dead_letters(p, &topology, DeadLetterOp::Replay)
        }
        ToPartition::DiscardDeadLetter {
            topology,
            depot,
            offset,
            by,
        } => inbox.dead_letters(
            p,
            &topology,
            DeadLetterOp::Discard {
                depot: &depot,
                offset,
                by: &by,
            },
        ),
        _ => None,
    }
}

/// A stand-in tree for the origin's tree `r`: when it finishes (or is dropped unfinished),
/// its outcome goes to `r.host`.
pub fn stand_in_tree(
    nats: &Nats,
    r: TreeRef,
    partition: u32,
    offset: u64,
    open: &Arc<AtomicUsize>,
) -> Arc<Tree> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tree = Tree::new(tx, partition, offset, open);
    let client = nats.client.clone();
    nats.runtime.spawn(async move {
        let outcome = rx.await.unwrap_or_else(|_| {
            Err(ProcessingError::OutcomeUnknown {
                partition,
                offset,
                reason: "the tree's remote part ended unanswered".into(),
            })
        });
        let done = TreeDone { id: r.id, outcome };
        let _ = client.publish(trees_subject(&r.host), encode(&done)).await;
    });
    tree
}

/// Counts the outcomes other hosts send for this host's trees off them, and drops the
/// trees whose outcome is overdue.
pub async fn serve_trees(
    nats: Nats,
    trees: Arc<RemoteTrees>,
    owners: Arc<dyn Owners>,
) -> anyhow::Result<()> {
    let mut sub = nats.client.subscribe(trees_subject(&trees.host)).await?;
    let t = Arc::clone(&trees);
    nats.runtime.spawn(async move {
        while let Some(msg) = sub.next().await {
            match decode::<TreeDone>(&msg.payload) {
                Ok(done) => t.done(done),
                Err(e) => tracing::warn!("{e}"),
            }
        }
    });
    nats.runtime.spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let n = trees.expire(TREE_WAIT_MAX, &*owners);
            if n > 0 {
                tracing::warn!("{n} event trees dropped: their remote part did not answer");
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Owners as a fixed answer.
    struct Fixed(Option<&'static str>);

    impl Owners for Fixed {
        fn owner(&self, _: &PartitionId) -> Option<String> {
            self.0.map(str::to_string)
        }
    }

    fn to() -> PartitionId {
        PartitionId {
            module: "m".into(),
            since: 1,
            partition: 5,
        }
    }

    #[test]
    fn hop_messages_wait_for_an_owner_in_order_and_up_to_the_bound() {
        let confirmed = |next| PeerMessage::Confirmed { target: 1, next };
        let mut held: Held = (1..=3).map(|n| (Instant::now(), confirmed(n))).collect();
        let mut sent = Vec::new();
        let mut send = |host: &str, m: PeerMessage| {
            let PeerMessage::Confirmed { next, .. } = m else {
                panic!("not sent as queued")
            };
            sent.push((host.to_string(), next));
        };
        // No owner known yet, within the bound: all kept.
        drain_held(&mut held, None, Duration::from_secs(60), &mut send);
        assert_eq!(held.len(), 3);
        // An owner: all sent to it, in queue order.
        drain_held(&mut held, Some("h2"), Duration::from_secs(60), &mut send);
        assert!(held.is_empty());
        assert_eq!(
            sent,
            vec![("h2".into(), 1), ("h2".into(), 2), ("h2".into(), 3)]
        );
        // Past the bound with no owner: the old ones dropped, the fresh one kept.
        let old = Instant::now() - Duration::from_secs(2);
        held.push_back((old, confirmed(4)));
        held.push_back((Instant::now(), confirmed(5)));
        drain_held(&mut held, None, Duration::from_secs(1), |_, _| {
            panic!("nothing sent without an owner")
        });
        assert_eq!(held.len(), 1);
    }

    #[test]
    fn a_remote_part_whose_host_stopped_owning_its_partition_is_dropped() {
        let trees = RemoteTrees::new("h1");
        let (t, mut rx) = tree();
        t.add(1);
        trees.register(Arc::clone(&t), &to(), "h2");
        t.finish_one();
        drop(t);
        assert_eq!(
            trees.expire(Duration::from_secs(3600), &Fixed(Some("h2"))),
            0
        );
        assert!(rx.try_recv().is_err(), "its host still owns the partition");
        assert_eq!(
            trees.expire(Duration::from_secs(3600), &Fixed(Some("h3"))),
            1
        );
        assert!(matches!(
            rx.try_recv().unwrap(),
            Err(ProcessingError::OutcomeUnknown { .. })
        ));
    }

    fn tree() -> (
        Arc<Tree>,
        tokio::sync::oneshot::Receiver<Result<AppendOutcome, ProcessingError>>,
    ) {
        let open = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Tree::new(tx, 1, 9, &open), rx)
    }

    #[test]
    fn messages_between_hosts_round_trip() {
        let hop = ToPartition::Hop(WireHop {
            source: 3,
            seq: 7,
            topology: "t".into(),
            handler: "h".into(),
            payload: vec![0, 1, 255],
            origin_depot: "d".into(),
            origin_offset: 42,
            tree: Some(TreeRef {
                host: "h1".into(),
                id: 5,
            }),
        });
        let back: ToPartition = decode(&encode(&hop)).unwrap();
        let ToPartition::Hop(h) = back else {
            panic!("not a hop: {back:?}")
        };
        assert_eq!(
            (
                h.source,
                h.seq,
                h.payload,
                h.origin_offset,
                h.tree.unwrap().id
            ),
            (3, 7, vec![0, 1, 255], 42, 5)
        );
        let answer = Answer::Outcomes(vec![
            None,
            Some(Ok(AppendOutcome {
                partition: 2,
                offset: 10,
                results: BTreeMap::from([("t".to_string(), Value::Integer(4.into()))]),
                replayed: true,
            })),
            Some(Err(ProcessingError::KeyReused {
                key: "k".into(),
                partition: 2,
                offset: 3,
            })),
        ]);
        let Answer::Outcomes(o) = decode(&encode(&answer)).unwrap() else {
            panic!("not outcomes")
        };
        assert_eq!(o[0], None);
        assert_eq!(o[1].as_ref().unwrap().as_ref().unwrap().offset, 10);
        assert!(o[1].as_ref().unwrap().as_ref().unwrap().replayed);
        assert!(matches!(
            o[2],
            Some(Err(ProcessingError::KeyReused { offset: 3, .. }))
        ));
        assert!(decode::<ToPartition>(b"\xff garbage").is_err());
    }

    #[test]
    fn a_remote_part_counts_off_its_tree_with_results_and_failures() {
        let trees = RemoteTrees::new("h1");
        let (t, mut rx) = tree();
        t.add(2);
        let a = trees.register(Arc::clone(&t), &to(), "h2");
        let b = trees.register(Arc::clone(&t), &to(), "h2");
        assert_ne!(a.id, b.id);
        t.finish_one();
        trees.done(TreeDone {
            id: a.id,
            outcome: Ok(AppendOutcome {
                partition: 5,
                offset: 0,
                results: BTreeMap::from([("count".to_string(), Value::Integer(3.into()))]),
                replayed: false,
            }),
        });
        assert!(rx.try_recv().is_err(), "one remote part is still out");
        trees.done(TreeDone {
            id: a.id,
            outcome: Ok(AppendOutcome {
                partition: 5,
                offset: 0,
                results: BTreeMap::new(),
                replayed: false,
            }),
        });
        assert!(
            rx.try_recv().is_err(),
            "a second answer for one part counts nothing"
        );
        trees.done(TreeDone {
            id: b.id,
            outcome: Err(ProcessingError::Topology {
                partition: 5,
                offset: 0,
                topology: "words".into(),
                error: crate::runtime::GuestError {
                    code: "trap".into(),
                    message: "boom".into(),
                },
            }),
        });
        match rx.try_recv().unwrap() {
            Err(ProcessingError::Topology {
                partition,
                offset,
                topology,
                ..
            }) => assert_eq!((partition, offset, topology.as_str()), (1, 9, "words")),
            other => panic!("expected the remote failure, got {other:?}"),
        }
        assert_eq!(trees.waiting(), 0);
    }

    #[test]
    fn a_remote_part_that_never_answers_leaves_the_ack_unknown() {
        let trees = RemoteTrees::new("h1");
        let (t, mut rx) = tree();
        t.add(1);
        let r = trees.register(Arc::clone(&t), &to(), "h2");
        t.finish_one();
        drop(t);
        assert!(rx.try_recv().is_err(), "waiting for the remote part");
        assert_eq!(
            trees.expire(Duration::from_secs(3600), &Fixed(Some("h2"))),
            0
        );
        assert_eq!(trees.expire(Duration::ZERO, &Fixed(Some("h2"))), 1);
        assert!(matches!(
            rx.try_recv().unwrap(),
            Err(ProcessingError::OutcomeUnknown { .. })
        ));
        trees.done(TreeDone {
            id: r.id,
            outcome: Ok(AppendOutcome {
                partition: 0,
                offset: 0,
                results: BTreeMap::new(),
                replayed: false,
            }),
        });
        let (t, mut rx) = tree();
        let r = trees.register(Arc::clone(&t), &to(), "h2");
        drop(t);
        trees.done(TreeDone {
            id: r.id,
            outcome: Err(ProcessingError::OutcomeUnknown {
                partition: 2,
                offset: 1,
                reason: "restarted".into(),
            }),
        });
        assert!(
            matches!(
                rx.try_recv().unwrap(),
                Err(ProcessingError::OutcomeUnknown { .. })
            ),
            "an unknown remote outcome is never a success"
        );
    }
}
