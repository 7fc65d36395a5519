//! The replicated log seam: one fenced, append-only stream per partition (CLUSTER.md §0.3),
//! and [`MemoryLog`], its in-memory model for simulation tests.
//!
//! Contracts every implementation keeps (JetStream's, measured on 2.9.10 R3, CLUSTER.md §1.1):
//! - entries get dense sequence numbers 1, 2, 3, …; an entry is stored only if the log's
//!   last sequence, when it is applied, equals the one its publish expected
//!   (`Nats-Expected-Last-Sequence`, stream-wide) — otherwise [`LogError::WrongLastSequence`];
//! - a publish whose message id was stored within the dedup window is answered with the
//!   original sequence, **before** the expectation is checked (so retrying a publish whose
//!   answer was lost is safe: it is stored once, or refused because another writer wrote);
//! - an answer that never came ([`LogError::Unavailable`]) says nothing about whether the
//!   entry is stored;
//! - a stored entry is never changed or lost (the log's durability, CLUSTER.md §1.3).

use std::collections::HashMap;
use std::sync::Mutex;

/// What an entry carries (its subject's last token: `sl.<module>.<k>.<kind>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Inputs: depot records (and, later, accepted hops).
    In,
    /// Effects: one partition commit (PState writes and progress).
    Fx,
    /// Control: ownership epochs.
    Ctl,
}

impl EntryKind {
    pub fn token(self) -> &'static str {
        match self {
            EntryKind::In => "in",
            EntryKind::Fx => "fx",
            EntryKind::Ctl => "ctl",
        }
    }

    pub fn from_token(token: &str) -> Option<Self> {
        match token {
            "in" => Some(EntryKind::In),
            "fx" => Some(EntryKind::Fx),
            "ctl" => Some(EntryKind::Ctl),
            _ => None,
        }
    }
}

/// An entry to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub kind: EntryKind,
    /// Deterministic and unique per writer position (see [`super::fence`]): a retry carries
    /// the same id, so the log stores it once.
    pub msg_id: String,
    pub payload: Vec<u8>,
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub kind: EntryKind,
    pub msg_id: String,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// Another writer appended first: nothing of this publish from here on is stored.
    #[error("wrong last sequence: the log is past {expected}")]
    WrongLastSequence { expected: u64 },
    /// No answer (timeout, no quorum, connection lost): the entry may or may not be stored.
    #[error("replicated log unavailable: {0}")]
    Unavailable(String),
    /// Refused for good (too large, no such stream): nothing is stored.
    #[error("replicated log refused: {0}")]
    Refused(String),
}

/// A publish of several entries that stopped at entry `stored` (those before it are stored).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error} (after {stored} entries)")]
pub struct PublishFailure {
    pub stored: usize,
    pub error: LogError,
}

/// One partition's replicated log.
pub trait ReplicatedLog {
    /// Publishes `entries` in order, entry `i` expecting the log's last sequence to be
    /// `expected_last + i` (pipelined: one round trip for all of them where the log allows).
    fn publish(&self, expected_last: u64, entries: &[Outgoing]) -> Result<(), PublishFailure>;
    /// Up to `max` entries from sequence `from` on, in order (fewer at the end of the log).
    fn read(&self, from: u64, max: usize) -> Result<Vec<Stored>, LogError>;
    /// The last stored sequence (0: empty).
    fn last_seq(&self) -> Result<u64, LogError>;
    /// The last `Ctl` entry stored (`None`: never claimed): the partition's current claim.
    /// This default reads the whole log (the models); a log that can look up the last
    /// entry of a kind answers in one request.
    fn last_claim(&self) -> Result<Option<Stored>, LogError> {
        let mut last = None;
        let mut from = 1;
        loop {
            let batch = self.read(from, 512)?;
            let Some(end) = batch.last().map(|s| s.seq) else {
                return Ok(last);
            };
            if let Some(claim) = batch.into_iter().rev().find(|s| s.kind == EntryKind::Ctl) {
                last = Some(claim);
            }
            from = end + 1;
        }
    }
}

/// How the in-memory log answers, set by a simulation's scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    /// Every call fails with [`LogError::Unavailable`]; nothing is stored.
    Down,
    /// Publishes are stored but their answers are lost ([`LogError::Unavailable`]).
    LoseAnswers,
    /// A publish stores at most this many of its entries, then is answered
    /// [`LogError::Unavailable`] (a writer or a leader dying in the middle of a pipeline).
    StoreOnly(usize),
}

#[derive(Debug)]
struct MemoryState {
    entries: Vec<Stored>,
    /// msg id → sequence (the dedup window never ends here: simulations are short).
    ids: HashMap<String, u64>,
    mode: Mode,
}

/// The model of [`ReplicatedLog`]: exact expected-last-sequence, dedup checked first,
/// faults by [`Mode`].
#[derive(Debug)]
pub struct MemoryLog {
    state: Mutex<MemoryState>,
}

impl Default for MemoryLog {
    fn default() -> Self {
        Self {
            state: Mutex::new(MemoryState {
                entries: Vec::new(),
                ids: HashMap::new(),
                mode: Mode::Up,
            }),
        }
    }
}

impl MemoryLog {
    pub fn mode(&self) -> Mode {
        self.state.lock().expect("poisoned").mode
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().expect("poisoned").mode = mode;
    }

    /// Every stored entry (for checkers).
    pub fn entries(&self) -> Vec<Stored> {
        self.state.lock().expect("poisoned").entries.clone()
    }
}

impl ReplicatedLog for MemoryLog {
    fn publish(&self, expected_last: u64, entries: &[Outgoing]) -> Result<(), PublishFailure> {
        let mut s = self.state.lock().expect("poisoned");
        let unavailable = |stored| PublishFailure {
            stored,
            error: LogError::Unavailable("the log is down".into()),
        };
        if s.mode == Mode::Down {
            return Err(unavailable(0));
        }
        let cut = match s.mode {
            Mode::StoreOnly(n) => n.min(entries.len()),
            _ => entries.len(),
        };
        for (i, e) in entries[..cut].iter().enumerate() {
            let expected = expected_last + i as u64;
            if let Some(&seq) = s.ids.get(&e.msg_id) {
                if seq != expected + 1 {
                    // A duplicate of an entry stored elsewhere than this writer expects: the
                    // writer's view is wrong; refuse like a stale expectation.
                    return Err(PublishFailure {
                        stored: i,
                        error: LogError::WrongLastSequence { expected },
                    });
                }
                continue;
            }
            let last = s.entries.len() as u64;
            if last != expected {
                return Err(PublishFailure {
                    stored: i,
                    error: LogError::WrongLastSequence { expected },
                });
            }
            s.ids.insert(e.msg_id.clone(), last + 1);
            s.entries.push(Stored {
                seq: last + 1,
                kind: e.kind,
                msg_id: e.msg_id.clone(),
                payload: e.payload.clone(),
            });
        }
        if s.mode == Mode::LoseAnswers || cut < entries.len() {
            return Err(unavailable(cut));
        }
        Ok(())
    }

    fn read(&self, from: u64, max: usize) -> Result<Vec<Stored>, LogError> {
        let s = self.state.lock().expect("poisoned");
        if s.mode == Mode::Down {
            return Err(LogError::Unavailable("the log is down".into()));
        }
        let start = from.max(1) as usize - 1;
        Ok(s.entries.iter().skip(start).take(max).cloned().collect())
    }

    fn last_seq(&self) -> Result<u64, LogError> {
        let s = self.state.lock().expect("poisoned");
        if s.mode == Mode::Down {
            return Err(LogError::Unavailable("the log is down".into()));
        }
        Ok(s.entries.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Outgoing {
        Outgoing {
            kind: EntryKind::In,
            msg_id: id.into(),
            payload: id.as_bytes().to_vec(),
        }
    }

    #[test]
    fn expected_last_sequence_is_exact_and_dedup_comes_first() {
        let log = MemoryLog::default();
        log.publish(0, &[entry("a"), entry("b")]).unwrap();
        assert_eq!(log.last_seq().unwrap(), 2);
        // A stale expectation is refused and stores nothing.
        let err = log.publish(1, &[entry("c")]).unwrap_err();
        assert_eq!(err.stored, 0);
        assert_eq!(err.error, LogError::WrongLastSequence { expected: 1 });
        // A retry of stored entries with their original expectation is answered, not stored
        // again, even though the log moved on; then the new entry is checked normally.
        log.publish(0, &[entry("a"), entry("b"), entry("c")])
            .unwrap();
        let ids: Vec<_> = log.entries().into_iter().map(|e| e.msg_id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(log.read(2, 10).unwrap()[0].msg_id, "b");
    }

    #[test]
    fn lost_answers_store_and_down_stores_nothing() {
        let log = MemoryLog::default();
        log.set_mode(Mode::LoseAnswers);
        assert!(matches!(
            log.publish(0, &[entry("a")]).unwrap_err().error,
            LogError::Unavailable(_)
        ));
        log.set_mode(Mode::Down);
        assert!(log.publish(1, &[entry("b")]).is_err());
        assert!(log.last_seq().is_err());
        log.set_mode(Mode::Up);
        assert_eq!(log.last_seq().unwrap(), 1);
    }
}
