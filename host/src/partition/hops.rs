//! Hops: identity, outbox, watermarks and confirmations (CLUSTER.md §4.4, one-host form).
//!
//! A hop's identity is `(source, target, seq)` with `seq` **dense per pair**: the source
//! numbers the hops it sends to each target 0, 1, 2, … The source keeps every hop it sent in
//! its *outbox* until the target confirms it; the target keeps, per source, the *applied*
//! watermark: the next seq it expects. Invariants:
//! - a hop is sent only after the commit that put it in the outbox (and moved the pair's
//!   counter past it) is durable, so a seq names the same hop forever, across any crash;
//! - the target applies hop `seq` only when `seq == applied`, advancing the watermark in the
//!   same commit as the hop's effects: `seq < applied` is a duplicate (skipped), `seq >
//!   applied` a gap (the target asks the source to rewind to `applied` and drops the hop);
//! - the target confirms `applied` to the source only after that commit is durable, so the
//!   outbox always holds every hop the target may still need.
//!
//! Hence each hop is applied exactly once, and hops of one pair are applied in seq order.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::tree::Tree;
use crate::value::{as_i64, from_cbor, to_cbor, Value};

/// A hop on its way to its target partition.
pub struct Hop {
    pub source: u32,
    pub seq: u64,
    pub topology: String,
    pub handler: String,
    pub payload: Vec<u8>,
    pub origin_depot: Arc<str>,
    pub origin_offset: u64,
    /// The `full`-ack tree it belongs to (none once it was re-sent from the outbox).
    pub tree: Option<Arc<Tree>>,
}

/// What a target does with an arriving hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    Apply,
    /// Applied before: skip it.
    Duplicate,
    /// Hops before it are missing: drop it; `rewind` says whether to ask the source to
    /// re-send from `expected` (asked once per gap).
    Gap {
        expected: u64,
        rewind: bool,
    },
}

/// A partition's hop bookkeeping, in memory; its durable form is in the partition's progress.
#[derive(Debug, Default)]
pub struct HopBook {
    /// Per target: the next seq to assign.
    next_out: BTreeMap<u32, u64>,
    /// Per source: the next seq to apply.
    applied: BTreeMap<u32, u64>,
    /// Per source: the seq a rewind was asked for (cleared when it arrives).
    rewinding: BTreeMap<u32, u64>,
    /// Per source: watermarks not yet confirmed (waiting for a durable commit).
    unconfirmed: BTreeMap<u32, u64>,
    /// Per target: confirmed watermarks not yet trimmed from the outbox.
    trim: BTreeMap<u32, u64>,
    /// Per target: the highest watermark it confirmed since this incarnation started (0
    /// until it confirms: the outbox holds nothing below what was trimmed anyway).
    confirmed_out: BTreeMap<u32, u64>,
    /// What moved since the last commit: targets' counters, sources' watermarks.
    moved_out: BTreeMap<u32, u64>,
    moved_in: BTreeMap<u32, u64>,
}

impl HopBook {
    /// The book as restored from durable progress. Every restored watermark counts as
    /// unconfirmed: the next durable commit confirms it (confirmations are idempotent).
    pub fn restore(next_out: BTreeMap<u32, u64>, applied: BTreeMap<u32, u64>) -> Self {
        Self {
            unconfirmed: applied.clone(),
            next_out,
            applied,
            ..Self::default()
        }
    }

    /// The seq of the next hop to `target`.
    pub fn assign(&mut self, target: u32) -> u64 {
        let n = self.next_out.entry(target).or_insert(0);
        let seq = *n;
        *n += 1;
        self.moved_out.insert(target, *n);
        seq
    }

    /// Classifies an arriving hop and, for [`Arrival::Apply`], advances the watermark.
    pub fn arrive(&mut self, source: u32, seq: u64) -> Arrival {
        let expected = self.applied.get(&source).copied().unwrap_or(0);
        if seq < expected {
            // Sent again: the source may have lost the confirmation (a transport between
            // hosts loses messages), so confirm again after the next durable commit.
            self.unconfirmed.insert(source, expected);
            return Arrival::Duplicate;
        }
        if seq > expected {
            let rewind = self.rewinding.insert(source, expected) != Some(expected);
            return Arrival::Gap { expected, rewind };
        }
        self.rewinding.remove(&source);
        self.applied.insert(source, seq + 1);
        self.moved_in.insert(source, seq + 1);
        self.unconfirmed.insert(source, seq + 1);
        Arrival::Apply
    }

    /// `target` confirmed every hop below `next`.
    pub fn confirmed(&mut self, target: u32, next: u64) {
        let t = self.trim.entry(target).or_insert(0);
        *t = (*t).max(next);
        let c = self.confirmed_out.entry(target).or_insert(0);
        *c = (*c).max(next);
    }

    /// Targets that have not confirmed every hop sent to them: `(target, confirmed so far)`.
    pub fn unconfirmed_targets(&self) -> BTreeMap<u32, u64> {
        self.next_out
            .iter()
            .filter_map(|(t, next)| {
                let c = self.confirmed_out.get(t).copied().unwrap_or(0);
                (c < *next).then_some((*t, c))
            })
            .collect()
    }

    /// What the next commit must record: `(counters moved, watermarks moved, outbox trims)`.
    #[allow(clippy::type_complexity)]
    pub fn take_changes(&mut self) -> (BTreeMap<u32, u64>, BTreeMap<u32, u64>, BTreeMap<u32, u64>) {
        (
            std::mem::take(&mut self.moved_out),
            std::mem::take(&mut self.moved_in),
            std::mem::take(&mut self.trim),
        )
    }

    /// After a durable commit: the watermarks to confirm to their sources.
    pub fn take_confirmations(&mut self) -> BTreeMap<u32, u64> {
        std::mem::take(&mut self.unconfirmed)
    }

    /// Asks every source to re-send from this partition's watermarks (after a restart that
    /// lost hops taken from the queue): `(source, from)` for each of `partitions`.
    pub fn rewind_all(&mut self, partitions: u32) -> Vec<(u32, u64)> {
        (0..partitions)
            .map(|s| {
                let from = self.applied(s);
                self.rewinding.insert(s, from);
                (s, from)
            })
            .collect()
    }

    /// Whether confirmed outbox entries wait to be trimmed.
    pub fn has_trims(&self) -> bool {
        !self.trim.is_empty()
    }

    /// The next seq expected from `source`.
    pub fn applied(&self, source: u32) -> u64 {
        self.applied.get(&source).copied().unwrap_or(0)
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

/// The outbox form of a hop (its target and seq are the outbox key).
pub fn encode_outbox(h: &Hop) -> Vec<u8> {
    to_cbor(&Value::Map(vec![
        (text("topology"), text(&h.topology)),
        (text("handler"), text(&h.handler)),
        (text("payload"), Value::Bytes(h.payload.clone())),
        (text("depot"), text(&h.origin_depot)),
        (text("offset"), Value::Integer(h.origin_offset.into())),
    ]))
}

/// A hop read back from `source`'s outbox; `None` if the entry is undecodable.
pub fn decode_outbox(source: u32, seq: u64, bytes: &[u8]) -> Option<Hop> {
    let Value::Map(entries) = from_cbor(bytes).ok()? else {
        return None;
    };
    let get = |name: &str| {
        entries
            .iter()
            .find(|(k, _)| *k == text(name))
            .map(|(_, v)| v)
    };
    let s = |name: &str| match get(name) {
        Some(Value::Text(t)) => Some(t.clone()),
        _ => None,
    };
    let payload = match get("payload") {
        Some(Value::Bytes(b)) => b.clone(),
        _ => return None,
    };
    Some(Hop {
        source,
        seq,
        topology: s("topology")?,
        handler: s("handler")?,
        payload,
        origin_depot: s("depot")?.into(),
        origin_offset: u64::try_from(as_i64(get("offset")?)?).ok()?,
        tree: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_are_dense_per_target() {
        let mut b = HopBook::default();
        assert_eq!([b.assign(1), b.assign(2), b.assign(1)], [0, 0, 1]);
        let (out, _, _) = b.take_changes();
        assert_eq!(out, BTreeMap::from([(1, 2), (2, 1)]));
        let mut r = HopBook::restore(out, BTreeMap::new());
        assert_eq!(r.assign(1), 2, "a restored counter continues");
    }

    #[test]
    fn arrivals_apply_in_order_skip_duplicates_and_ask_once_per_gap() {
        let mut b = HopBook::restore(BTreeMap::new(), BTreeMap::from([(4, 2)]));
        assert_eq!(b.arrive(4, 1), Arrival::Duplicate);
        assert_eq!(b.arrive(4, 2), Arrival::Apply);
        assert_eq!(
            b.arrive(4, 5),
            Arrival::Gap {
                expected: 3,
                rewind: true
            }
        );
        assert_eq!(
            b.arrive(4, 6),
            Arrival::Gap {
                expected: 3,
                rewind: false
            }
        );
        assert_eq!(b.arrive(4, 3), Arrival::Apply);
        assert_eq!(b.applied(4), 4);
        assert_eq!(b.take_confirmations(), BTreeMap::from([(4, 4)]));
    }

    #[test]
    fn targets_stay_unconfirmed_until_they_confirm_everything_sent() {
        let mut b = HopBook::restore(BTreeMap::from([(1, 3)]), BTreeMap::new());
        b.assign(2);
        assert_eq!(
            b.unconfirmed_targets(),
            BTreeMap::from([(1, 0), (2, 0)]),
            "restored counters count as unconfirmed"
        );
        b.confirmed(1, 2);
        b.confirmed(2, 1);
        assert_eq!(b.unconfirmed_targets(), BTreeMap::from([(1, 2)]));
        b.confirmed(1, 1);
        assert_eq!(
            b.unconfirmed_targets(),
            BTreeMap::from([(1, 2)]),
            "an older confirmation never goes back"
        );
        b.confirmed(1, 3);
        assert!(b.unconfirmed_targets().is_empty());
    }

    #[test]
    fn outbox_entries_round_trip() {
        let h = Hop {
            source: 2,
            seq: 9,
            topology: "t".into(),
            handler: "h".into(),
            payload: vec![1, 2],
            origin_depot: "d".into(),
            origin_offset: 44,
            tree: None,
        };
        let back = decode_outbox(2, 9, &encode_outbox(&h)).unwrap();
        assert_eq!(
            (
                back.topology,
                back.handler,
                back.payload,
                back.origin_offset
            ),
            ("t".to_string(), "h".to_string(), vec![1, 2], 44)
        );
        assert!(decode_outbox(2, 9, b"garbage").is_none());
    }
}
