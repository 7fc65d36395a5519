//! Dead letters: work a topology gave up on, kept with why, and run again or discarded on
//! request.
//!
//! A record (or hop) whose handler failed permanently, or transiently past
//! `handler_attempts_max`, is recorded in the partition's `dead-letters` table
//! ([`super::progress`]) in the commit that advances past it, so a poison record never wedges
//! the partition. A depot record's dead letter points at the record in the log (retention keeps
//! it); a hop's dead letter keeps the hop itself ([`DeadHop`]: handler, payload, origin), since
//! nothing else does once its watermark moved.
//!
//! Invariants: a replayed dead letter is removed in the same commit as the effects of its
//! successful run (a failing replay replaces it, payload kept); a discarded one is removed in a
//! durable commit of its own and logged on the `audit` target.

use std::sync::Arc;

use super::core::{Item, Partition, PartitionError};
use super::seams::{Commit, Executor, HopTransport, PartitionLog, PartitionStore};
use super::TopologyKind;
use crate::value::{as_i64, Value};

/// A record a topology gave up on, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub topology: String,
    pub depot: String,
    pub offset: u64,
    pub error_code: String,
    pub error: String,
    pub attempts: u32,
    /// For a hop's dead letter: the hop, to run again (`None`: the record is in the depot log).
    pub hop: Option<DeadHop>,
}

/// The hop a dead letter stands for: what its replay runs.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadHop {
    pub handler: String,
    /// The hop's payload (CBOR), as the guest sent it.
    pub payload: Vec<u8>,
    /// The depot record whose event tree the hop belonged to.
    pub origin_depot: String,
    pub origin_offset: u64,
}

impl DeadLetter {
    pub fn new(
        topology: &str,
        depot: &str,
        offset: u64,
        code: &str,
        error: &str,
        attempts: u32,
    ) -> Self {
        Self {
            topology: topology.to_string(),
            depot: depot.to_string(),
            offset,
            error_code: code.to_string(),
            error: error.to_string(),
            attempts,
            hop: None,
        }
    }

    /// The stored form (the key is `(topology, depot, offset)`).
    pub fn encode(&self) -> Value {
        let t = |s: &str| Value::Text(s.to_string());
        let mut m = vec![
            (t("code"), t(&self.error_code)),
            (t("error"), t(&self.error)),
            (t("attempts"), Value::Integer(self.attempts.into())),
        ];
        if let Some(h) = &self.hop {
            m.push((t("handler"), t(&h.handler)));
            m.push((t("payload"), Value::Bytes(h.payload.clone())));
            m.push((t("origin_depot"), t(&h.origin_depot)));
            m.push((t("origin_offset"), Value::Integer(h.origin_offset.into())));
        }
        Value::Map(m)
    }

    /// Reads the stored form back (missing fields read as empty: older versions kept fewer).
    pub fn decode(topology: &str, depot: &str, offset: u64, v: &Value) -> Self {
        let field = |name: &str| crate::value::field(v, name).cloned();
        let text = |name: &str| match field(name) {
            Some(Value::Text(s)) => Some(s),
            _ => None,
        };
        let hop = match (text("handler"), field("payload")) {
            (Some(handler), Some(Value::Bytes(payload))) => Some(DeadHop {
                handler,
                payload,
                origin_depot: text("origin_depot").unwrap_or_default(),
                origin_offset: field("origin_offset").and_then(|v| as_i64(&v)).unwrap_or(0) as u64,
            }),
            _ => None,
        };
        Self {
            topology: topology.to_string(),
            depot: depot.to_string(),
            offset,
            error_code: text("code").unwrap_or_default(),
            error: text("error").unwrap_or_default(),
            attempts: field("attempts").and_then(|v| as_i64(&v)).unwrap_or(0) as u32,
            hop,
        }
    }

    /// The key of this dead letter in its partition.
    pub fn key(&self) -> (String, String, u64) {
        (self.topology.clone(), self.depot.clone(), self.offset)
    }
}

/// What a discard did.
#[derive(Debug)]
pub enum Discard {
    Done(DeadLetter),
    /// There is no such dead letter.
    Missing,
    /// A microbatch of its topology is running on the partition: try again shortly.
    Busy,
}

/// Why a dead-letter replay did not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("`{0}` is not a stream topology")]
    NotStream(String),
    /// The partition failed while replaying; it restarts.
    #[error(transparent)]
    Partition(#[from] PartitionError),
}

impl ReplayError {
    /// The failure the partition must restart for, if any.
    pub fn partition_failed(&self) -> Option<String> {
        match self {
            ReplayError::Partition(e) => Some(e.to_string()),
            ReplayError::NotStream(_) => None,
        }
    }
}

impl<X: Executor, L: PartitionLog, S: PartitionStore, T: HopTransport> Partition<X, L, S, T> {
    /// Re-runs a stream topology on the records of its dead letters here; answers
    /// (replayed successfully, still failing).
    pub fn replay_dead_letters(&mut self, topology: &str) -> Result<(u64, u64), ReplayError> {
        let e = |e: super::seams::StorageError| ReplayError::Partition(PartitionError::Store(e));
        let t = self
            .topologies
            .iter()
            .find(|t| t.name == topology && t.kind == TopologyKind::Stream)
            .cloned()
            .ok_or_else(|| ReplayError::NotStream(topology.to_string()))?;
        let letters = self.store.dead_letters(topology, usize::MAX).map_err(e)?;
        let mut items = Vec::new();
        for d in letters {
            if let Some(hop) = d.hop {
                items.push(Item::Replay {
                    topology: t.name.clone(),
                    depot: Arc::from(d.depot.as_str()),
                    offset: d.offset,
                    record: hop.payload.clone(),
                    hop: Some(hop),
                });
                continue;
            }
            if !t.depots.contains(&d.depot) {
                continue;
            }
            if let Some((offset, record)) = self
                .log
                .read(&d.depot, d.offset, 1)
                .map_err(PartitionError::Log)?
                .into_iter()
                .next()
            {
                if offset == d.offset {
                    items.push(Item::Replay {
                        topology: t.name.clone(),
                        depot: Arc::from(d.depot.as_str()),
                        offset,
                        record,
                        hop: None,
                    });
                }
            }
        }
        let total = items.len() as u64;
        self.process(items, None)?;
        let still = self
            .store
            .dead_letters(topology, usize::MAX)
            .map_err(e)?
            .into_iter()
            .filter(|d| d.hop.is_some() || t.depots.contains(&d.depot))
            .count() as u64;
        Ok((total.saturating_sub(still), still))
    }

    /// Discards one dead letter for good (durably, before answering) and logs it on the
    /// `audit` target. Refused while a microbatch of the topology runs here: a replay batch
    /// may hold the dead letter, and would apply it after the discard.
    pub fn discard_dead_letter(
        &mut self,
        topology: &str,
        depot: &str,
        offset: u64,
        by: &str,
    ) -> Result<Discard, PartitionError> {
        if self.mb.is_running(topology) {
            return Ok(Discard::Busy);
        }
        let found = self
            .store
            .dead_letters(topology, usize::MAX)
            .map_err(PartitionError::Store)?
            .into_iter()
            .find(|d| d.depot == depot && d.offset == offset);
        let Some(d) = found else {
            return Ok(Discard::Missing);
        };
        let c = Commit {
            dead_letters_remove: vec![d.key()],
            ..Commit::default()
        };
        self.store
            .commit(&c, false)
            .map_err(PartitionError::Store)?;
        self.flush.dirty = true;
        self.make_durable()?;
        tracing::info!(
            target: "audit",
            module = &*self.cfg.module,
            partition = self.cfg.partition,
            topology,
            depot,
            offset,
            code = d.error_code,
            error = d.error,
            by,
            "dead letter discarded"
        );
        Ok(Discard::Done(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hop_dead_letter_keeps_its_hop_through_the_stored_form() {
        let mut d = DeadLetter::new("t", "hop:land:from-p3", 12, "guest-error", "closed", 2);
        d.hop = Some(DeadHop {
            handler: "land".into(),
            payload: vec![0x62, b'h', b'i'],
            origin_depot: "sends".into(),
            origin_offset: 7,
        });
        let back = DeadLetter::decode("t", "hop:land:from-p3", 12, &d.encode());
        assert_eq!(back, d);
        let plain = DeadLetter::new("t", "sends", 4, "trap", "boom", 1);
        assert_eq!(DeadLetter::decode("t", "sends", 4, &plain.encode()), plain);
        // What older versions stored (no hop) reads back without one.
        let old = Value::Map(vec![(
            Value::Text("code".into()),
            Value::Text("trap".into()),
        )]);
        let read = DeadLetter::decode("t", "sends", 4, &old);
        assert_eq!((read.error_code.as_str(), read.hop), ("trap", None));
    }
}
