//! The commit protocol: how one batch's work becomes durable effects, sent hops and answers.
//!
//! For a batch of items (records already durable in the depot log, arriving hops, replayed
//! dead letters), in queue order:
//! 1. run each item's handlers; a hop is applied only if it is the next of its pair
//!    ([`super::hops::HopBook::arrive`]); every emitted hop gets the next seq of its
//!    (this partition → target) pair;
//! 2. commit, in **one** store transaction: the handlers' writes, the topologies' processed
//!    offsets, dead letters, the emitted hops (the outbox) with the pairs' counters, and the
//!    applied-hop watermarks. The commit is **durable when it emitted a hop** (or the flush
//!    interval passed); otherwise it may be lost by a crash, which is safe: the depot log
//!    replays the records, and the sources still hold the unconfirmed hops;
//! 3. then send the hops, confirm applied hops to their sources once durable, and count each
//!    item off its `full`-ack tree.
//!
//! Why exactly once: a hop's seq is fixed by a durable commit before anyone sees it, so after
//! any crash a seq names the same hop; the target applies each seq once (its watermark moves
//! in the commit holding the hop's effects); the source keeps the hop until the target
//! confirms a *durable* watermark past it. A record's local effects commit with its processed
//! offset, so recovery replays exactly the records whose commit was lost — and none of their
//! hops had been sent, because a commit with hops is durable before sending.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::core::{Item, Partition, PartitionError};
use super::dead_letters::DeadHop;
use super::hops::{encode_outbox, Arrival, Hop};
use super::seams::{Commit, Executor, HopTransport, PartitionLog, PartitionStore};
use super::tree::Tree;
use super::work::PeerMessage;
use super::{Topology, TopologyKind};
use crate::imports::{EmittedHop, HopDest};
use crate::pstate::store::DeadLetter;
use crate::runtime::RecordCtx;

/// Processed offsets that replay must not redo: `(topology, depot)` → first offset not done.
pub(super) type Done = std::collections::BTreeMap<(String, String), u64>;

/// A hop emitted in this batch, addressed, waiting for the commit.
struct Outgoing {
    target: u32,
    hop: Hop,
}

impl<X: Executor, L: PartitionLog, S: PartitionStore, T: HopTransport> Partition<X, L, S, T> {
    /// Runs, commits and settles one batch of items (see the module docs). `done`, during
    /// replay, skips topology t for a record when `done[(t, depot)]` is past its offset.
    pub(super) fn process(
        &mut self,
        items: Vec<Item>,
        done: Option<&Done>,
    ) -> Result<(), PartitionError> {
        if items.is_empty() && !self.hops.has_trims() {
            return Ok(());
        }
        let mut commit = Commit::default();
        let mut settle: Vec<(Option<Arc<Tree>>, Vec<Outgoing>)> = Vec::with_capacity(items.len());
        let topologies = Arc::clone(&self.topologies);
        let n_items = items.len() as u64;
        for item in items {
            let mut out = Vec::new();
            let tree = match item {
                Item::Record {
                    depot,
                    offset,
                    record,
                    tree,
                } => {
                    for t in topologies
                        .iter()
                        .filter(|t| t.depots.iter().any(|d| **d == *depot))
                    {
                        self.run_record(
                            t,
                            &depot,
                            offset,
                            &record,
                            &tree,
                            done,
                            &mut commit,
                            &mut out,
                        );
                    }
                    tree
                }
                Item::Replay {
                    topology,
                    depot,
                    offset,
                    record,
                    hop,
                } => {
                    if let Some(t) = topologies.iter().find(|t| t.name == topology) {
                        self.replay_one(t, &depot, offset, &record, hop, &mut commit, &mut out);
                    }
                    None
                }
                Item::Hop(h) => match self.hops.arrive(h.source, h.seq) {
                    Arrival::Apply => {
                        self.apply_hop(&h, &topologies, &mut commit, &mut out);
                        h.tree
                    }
                    Arrival::Duplicate => h.tree,
                    Arrival::Gap { expected, rewind } => {
                        if rewind {
                            self.transport.send(
                                h.source,
                                PeerMessage::Rewind {
                                    target: self.cfg.partition,
                                    from: expected,
                                },
                            );
                        }
                        // Dropped unapplied: its tree must not count it done (it answers
                        // "outcome unknown" once nothing else holds it).
                        None
                    }
                },
            };
            settle.push((tree, out));
        }
        if let Some(e) = self.exec.take_storage_fault() {
            // Nothing of the batch commits; its trees answer "outcome unknown" when dropped.
            self.exec.take_writes();
            return Err(PartitionError::Store(e));
        }
        commit.writes = self.exec.take_writes();
        for o in settle.iter().flat_map(|(_, out)| out) {
            commit
                .outbox_put
                .push((o.target, o.hop.seq, encode_outbox(&o.hop)));
        }
        let (hops_next, hops_applied, outbox_trim) = self.hops.take_changes();
        commit.hops_next = hops_next;
        commit.hops_applied = hops_applied;
        commit.outbox_trim = outbox_trim;
        if !commit.is_empty() {
            self.position += 1;
            commit.position = self.position;
        }
        // Hops are sent only once the commit naming them is durable (the module docs).
        let durable = !commit.outbox_put.is_empty() || self.flush_due();
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.counters.items.fetch_add(n_items, Ordering::Relaxed);
        self.store
            .commit(&commit, durable)
            .map_err(PartitionError::Store)?;
        if durable {
            self.after_durable();
        } else if !commit.is_empty() {
            self.flush.dirty = true;
        }
        for (tree, out) in settle {
            for o in out {
                self.send_hop(o.target, o.hop);
            }
            if let Some(tree) = tree {
                tree.finish_one();
            }
        }
        Ok(())
    }

    /// Runs topology `t` on one record, unless replay says it was done.
    #[allow(clippy::too_many_arguments)]
    fn run_record(
        &mut self,
        t: &Topology,
        depot: &Arc<str>,
        offset: u64,
        record: &[u8],
        tree: &Option<Arc<Tree>>,
        done: Option<&Done>,
        commit: &mut Commit,
        out: &mut Vec<Outgoing>,
    ) {
        if t.kind == TopologyKind::Microbatch {
            // Settled when the batch holding this record commits.
            if let Some(tree) = tree {
                tree.add(1);
                self.mb_waiting
                    .push((t.name.clone(), Arc::clone(depot), offset, Arc::clone(tree)));
            }
            return;
        }
        let key = (t.name.clone(), depot.to_string());
        if done.and_then(|d| d.get(&key)).is_some_and(|&p| offset < p) {
            return;
        }
        let ctx = self.ctx(depot, offset, None);
        match self.run_handler(t, &t.handler, record, ctx) {
            Ok((ack, emitted)) => {
                if let (Some(v), Some(tree)) = (ack, tree) {
                    tree.result(&t.name, v);
                }
                self.address(t, emitted, depot, offset, tree, out);
            }
            Err((error, attempts)) => {
                commit.dead_letters.push(DeadLetter::new(
                    &t.name,
                    depot,
                    offset,
                    &error.code,
                    &error.message,
                    attempts,
                ));
                if let Some(tree) = tree {
                    tree.fail(&t.name, error);
                }
            }
        }
        commit.offsets.insert(key, offset + 1);
    }

    /// Runs a dead letter again: a depot record through the topology's handler, a hop through
    /// its hop handler, in its origin's context. Success removes the dead letter in this
    /// commit; failure replaces it (the hop kept).
    #[allow(clippy::too_many_arguments)]
    fn replay_one(
        &mut self,
        t: &Topology,
        depot: &Arc<str>,
        offset: u64,
        record: &[u8],
        hop: Option<DeadHop>,
        commit: &mut Commit,
        out: &mut Vec<Outgoing>,
    ) {
        let (handler, ctx_depot, ctx_offset): (&str, Arc<str>, u64) = match &hop {
            Some(h) => (
                &h.handler,
                Arc::from(h.origin_depot.as_str()),
                h.origin_offset,
            ),
            None => (&t.handler, Arc::clone(depot), offset),
        };
        let handler = handler.to_string();
        let ctx = self.ctx(&ctx_depot, ctx_offset, None);
        match self.run_handler(t, &handler, record, ctx) {
            Ok((_, emitted)) => {
                commit
                    .dead_letters_remove
                    .push((t.name.clone(), depot.to_string(), offset));
                self.address(t, emitted, &ctx_depot, ctx_offset, &None, out);
            }
            Err((error, attempts)) => {
                let mut d = DeadLetter::new(
                    &t.name,
                    depot,
                    offset,
                    &error.code,
                    &error.message,
                    attempts,
                );
                d.hop = hop;
                commit.dead_letters.push(d);
            }
        }
    }

    /// Runs an arriving hop's handler (its watermark already moved).
    fn apply_hop(
        &mut self,
        h: &Hop,
        topologies: &[Topology],
        commit: &mut Commit,
        out: &mut Vec<Outgoing>,
    ) {
        let Some(t) = topologies.iter().find(|t| t.name == h.topology) else {
            tracing::warn!(
                module = &*self.cfg.module,
                partition = self.cfg.partition,
                topology = h.topology,
                "hop for a topology this module no longer has; dropped"
            );
            return;
        };
        let ctx = self.ctx(&h.origin_depot, h.origin_offset, None);
        match self.run_handler(t, &h.handler, &h.payload, ctx) {
            Ok((ack, emitted)) => {
                if let (Some(v), Some(tree)) = (ack, &h.tree) {
                    tree.result(&t.name, v);
                }
                self.address(t, emitted, &h.origin_depot, h.origin_offset, &h.tree, out);
            }
            Err((error, attempts)) => {
                commit.dead_letters.push(DeadLetter {
                    topology: t.name.clone(),
                    depot: format!("hop:{}:from-p{}", h.handler, h.source),
                    offset: h.seq,
                    error_code: error.code.clone(),
                    error: error.message.clone(),
                    attempts,
                    hop: Some(DeadHop {
                        handler: h.handler.clone(),
                        payload: h.payload.clone(),
                        origin_depot: h.origin_depot.to_string(),
                        origin_offset: h.origin_offset,
                    }),
                });
                if let Some(tree) = &h.tree {
                    tree.fail(&t.name, error);
                }
            }
        }
    }

    pub(super) fn ctx<'a>(
        &self,
        depot: &'a str,
        offset: u64,
        batch_id: Option<u64>,
    ) -> RecordCtx<'a> {
        RecordCtx {
            depot,
            partition: self.cfg.partition,
            offset,
            partitions: self.cfg.partitions,
            batch_id,
        }
    }

    /// The partitions a hop goes to.
    pub(super) fn targets(&self, dest: &HopDest) -> Vec<u32> {
        match dest {
            HopDest::Key(k) => {
                vec![crate::pstate::partition_of_key(k, self.cfg.partitions).unwrap_or(0)]
            }
            HopDest::All => (0..self.cfg.partitions).collect(),
            HopDest::Partition(p) => vec![*p],
        }
    }

    /// Gives emitted hops their targets and per-pair sequence numbers, and counts them in
    /// the tree.
    fn address(
        &mut self,
        t: &Topology,
        emitted: Vec<EmittedHop>,
        depot: &Arc<str>,
        offset: u64,
        tree: &Option<Arc<Tree>>,
        out: &mut Vec<Outgoing>,
    ) {
        for e in emitted {
            for target in self.targets(&e.dest) {
                let seq = self.hops.assign(target);
                if let Some(tree) = tree {
                    tree.add(1);
                }
                out.push(Outgoing {
                    target,
                    hop: Hop {
                        source: self.cfg.partition,
                        seq,
                        topology: t.name.clone(),
                        handler: e.handler.clone(),
                        payload: e.payload.clone(),
                        origin_depot: Arc::clone(depot),
                        origin_offset: offset,
                        tree: tree.clone(),
                    },
                });
            }
        }
    }
}
