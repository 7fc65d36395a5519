//! Ownership by fence (CLUSTER.md §0.5): epochs, claims, the owner's fenced writer, and the
//! reader that restores a partition from its log.
//!
//! A partition's log is written by one owner at a time. Taking a partition means publishing
//! `Ctl: Epoch{n+1, host}` expecting the log's last sequence to be the last one the claimant
//! read; from then on every entry the owner publishes expects exactly the sequence after its
//! previous one. Invariants (checked by `tests/cluster_sim.rs` against a model, and by the
//! cluster suite against JetStream):
//! - **one writer**: after `Epoch{n}` is stored, no entry of an epoch below `n` is stored —
//!   the previous owner's expectation is stale, so its every later publish is refused
//!   (`WrongLastSequence`); the reader treats a violation as damage;
//! - **acked means stored**: [`Owner::write`] returns `Ok` only after every part is stored;
//! - **idempotent retries**: an entry's message id is `<host>.<epoch>.<seq>`, unique per
//!   writer position, so re-publishing after a lost answer stores it once or is refused;
//! - **whole entries**: an entry larger than one message is split into parts (all but the
//!   last flagged `more`); the reader yields it only once the last part is read, and drops a
//!   group that a new epoch interrupted (its writer died before the write returned).
//!
//! Frame of every stored payload: `epoch: u64 BE, flags: u8, body`.

use std::sync::Arc;

use super::log::{EntryKind, LogError, Outgoing, PublishFailure, ReplicatedLog, Stored};

/// The largest body one message carries (the rest goes in further parts). JetStream's
/// default `max_payload` is 1 MiB, headers included.
pub const PART_BYTES_MAX: usize = 900 * 1024;

const FRAME_BYTES: usize = 9;
const FLAG_MORE: u8 = 1;

/// An ownership epoch: the claim stored as a `Ctl` entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Epoch {
    pub number: u64,
    pub host: String,
}

/// A whole entry as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The sequence of its last part.
    pub seq: u64,
    pub kind: EntryKind,
    pub epoch: u64,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Log(#[from] LogError),
    /// The log breaks an invariant above; nothing read from it can be trusted.
    #[error("partition log damaged at sequence {seq}: {reason}")]
    Damaged { seq: u64, reason: String },
    /// Applying a sound entry failed (the local store's error: retrying may help).
    #[error("applying the log entry at sequence {seq}: {reason}")]
    Apply { seq: u64, reason: String },
}

fn frame(epoch: u64, more: bool, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_BYTES + body.len());
    out.extend_from_slice(&epoch.to_be_bytes());
    out.push(if more { FLAG_MORE } else { 0 });
    out.extend_from_slice(body);
    out
}

/// `(epoch, more, body)` of a stored payload.
fn unframe(stored: &Stored) -> Result<(u64, bool, &[u8]), ViewError> {
    if stored.payload.len() < FRAME_BYTES {
        return Err(ViewError::Damaged {
            seq: stored.seq,
            reason: format!("a {}-byte entry has no frame", stored.payload.len()),
        });
    }
    let epoch = u64::from_be_bytes(stored.payload[..8].try_into().expect("8 bytes"));
    Ok((
        epoch,
        stored.payload[8] & FLAG_MORE != 0,
        &stored.payload[FRAME_BYTES..],
    ))
}

/// The latest epoch stored in `log` (0: never claimed), read from the start.
pub fn current_epoch<L: ReplicatedLog + ?Sized>(log: &L) -> Result<u64, ViewError> {
    let mut view = LogView::default();
    view.catch_up(log, |_| Ok(()))?;
    Ok(view.epoch().map_or(0, |e| e.number))
}

/// The partition's current claim (`None`: never claimed), from the log's last `Ctl` entry:
/// one lookup, not a read of the log. A hint for choosing whom to claim over (placement);
/// the claim itself is fenced by the log's last sequence, so a stale answer only loses it.
pub fn latest_claim<L: ReplicatedLog + ?Sized>(log: &L) -> Result<Option<Epoch>, ViewError> {
    let Some(stored) = log.last_claim()? else {
        return Ok(None);
    };
    let (epoch, _, body) = unframe(&stored)?;
    let damaged = |reason: String| ViewError::Damaged {
        seq: stored.seq,
        reason,
    };
    let claim: Epoch =
        serde_json::from_slice(body).map_err(|e| damaged(format!("unreadable claim: {e}")))?;
    if claim.number != epoch {
        return Err(damaged(format!(
            "a claim of epoch {} framed as epoch {epoch}",
            claim.number
        )));
    }
    Ok(Some(claim))
}

/// A reader's position in a partition log: the current epoch and any entry whose parts are
/// still arriving. Restoring a partition is one view read to the end; an owner keeps reading
/// nothing (it wrote everything after its claim itself).
#[derive(Debug, Default)]
pub struct LogView {
    last: u64,
    epoch: Option<Epoch>,
    /// Parts of an entry read so far: (kind, epoch, body).
    partial: Option<(EntryKind, u64, Vec<u8>)>,
}

/// Entries one read asks for.
const READ_BATCH: usize = 512;

impl LogView {
    /// The last sequence read.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The latest claim read.
    pub fn epoch(&self) -> Option<&Epoch> {
        self.epoch.as_ref()
    }

    /// Reads from where the view stopped to the end of the log, calling `apply` on every
    /// whole `In`/`Fx` entry in order; answers how many it applied.
    pub fn catch_up<L: ReplicatedLog + ?Sized>(
        &mut self,
        log: &L,
        mut apply: impl FnMut(&Entry) -> Result<(), ViewError>,
    ) -> Result<u64, ViewError> {
        let mut applied = 0;
        loop {
            let batch = log.read(self.last + 1, READ_BATCH)?;
            if batch.is_empty() {
                return Ok(applied);
            }
            for stored in &batch {
                if stored.seq != self.last + 1 {
                    return Err(ViewError::Damaged {
                        seq: stored.seq,
                        reason: format!("expected sequence {}", self.last + 1),
                    });
                }
                if let Some(entry) = self.take(stored)? {
                    apply(&entry)?;
                    applied += 1;
                }
                self.last = stored.seq;
            }
        }
    }

    /// Folds one stored message into the view; a whole `In`/`Fx` entry comes out.
    fn take(&mut self, stored: &Stored) -> Result<Option<Entry>, ViewError> {
        let (epoch, more, body) = unframe(stored)?;
        let current = self.epoch.as_ref().map_or(0, |e| e.number);
        let damaged = |reason: String| ViewError::Damaged {
            seq: stored.seq,
            reason,
        };
        if stored.kind == EntryKind::Ctl {
            let claim: Epoch = serde_json::from_slice(body)
                .map_err(|e| damaged(format!("unreadable claim: {e}")))?;
            if claim.number != epoch || claim.number <= current {
                return Err(damaged(format!(
                    "claim of epoch {} after epoch {current}",
                    claim.number
                )));
            }
            // A group the previous owner did not finish was never acknowledged: drop it.
            self.partial = None;
            self.epoch = Some(claim);
            return Ok(None);
        }
        if epoch != current {
            return Err(damaged(format!(
                "an entry of epoch {epoch} in epoch {current} (fencing broken)"
            )));
        }
        let mut whole = match self.partial.take() {
            Some((kind, e, mut parts)) => {
                if kind != stored.kind || e != epoch {
                    return Err(damaged("an unfinished entry interrupted".into()));
                }
                parts.extend_from_slice(body);
                parts
            }
            None => body.to_vec(),
        };
        if more {
            self.partial = Some((stored.kind, epoch, std::mem::take(&mut whole)));
            return Ok(None);
        }
        Ok(Some(Entry {
            seq: stored.seq,
            kind: stored.kind,
            epoch,
            body: whole,
        }))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// Another host claimed the partition: this owner must stop (nothing more of its is
    /// stored, ever).
    #[error("fenced: another host claimed the partition after epoch {epoch}")]
    Fenced { epoch: u64 },
    /// No answer: the entry may be stored. [`Owner::retry`] until it answers, or drop the
    /// owner (a new claim reads what was stored).
    #[error("outcome unknown: {0}")]
    Unavailable(String),
    /// Refused for good; nothing of it is stored after the parts already stored.
    #[error("{0}")]
    Refused(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// Someone wrote between the read and the claim (a live owner, or a rival claim).
    #[error("the partition was written by epoch {} of {} during the claim", .current.number, .current.host)]
    Lost { current: Epoch },
    #[error(transparent)]
    View(#[from] ViewError),
}

/// Which epoch a claim takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The one after this epoch, the one the claimant judged dead (0: the log had no owner).
    Over(u64),
    /// This number, if every epoch stored is below it: a module's partitions take the epoch
    /// its first partition's claim won, so a claimant that lost that race (and later read a
    /// partition before the winner claimed it) can never take the partition back.
    At(u64),
}

/// The partition's current owner: the only writer of its log.
pub struct Owner<L: ?Sized> {
    log: Arc<L>,
    host: String,
    epoch: u64,
    /// The sequence the next stored message gets.
    next: u64,
    /// A publish whose answer was lost, to be retried as it was.
    uncertain: Option<Vec<Outgoing>>,
    part_bytes: usize,
}

impl<L: ReplicatedLog + ?Sized> Owner<L> {
    /// Claims the partition for `host` over epoch `over` (the one the caller judged dead; 0:
    /// the log had no owner): reads the log to its end (through `apply`), then stores
    /// `Epoch{n+1, host}`. Lost if the read shows a later claim than `over`, or anything was
    /// written between the read and the claim.
    pub fn claim(
        log: Arc<L>,
        host: &str,
        view: &mut LogView,
        over: u64,
        apply: impl FnMut(&Entry) -> Result<(), ViewError>,
    ) -> Result<Self, ClaimError> {
        Self::claim_as(log, host, view, Claim::Over(over), apply)
    }

    /// Claims the partition by `rule` (see [`Claim`]); otherwise as [`Owner::claim`].
    pub fn claim_as(
        log: Arc<L>,
        host: &str,
        view: &mut LogView,
        rule: Claim,
        mut apply: impl FnMut(&Entry) -> Result<(), ViewError>,
    ) -> Result<Self, ClaimError> {
        view.catch_up(&*log, &mut apply)?;
        let current = view.epoch().map_or(0, |e| e.number);
        let number = match rule {
            Claim::Over(over) if current == over => current + 1,
            Claim::At(number) if current < number => number,
            _ => {
                return Err(ClaimError::Lost {
                    current: view.epoch().cloned().unwrap_or(Epoch {
                        number: 0,
                        host: String::new(),
                    }),
                })
            }
        };
        let claim = Epoch {
            number,
            host: host.to_string(),
        };
        let expected = view.last();
        let message = Outgoing {
            kind: EntryKind::Ctl,
            msg_id: msg_id(host, number, expected + 1),
            payload: frame(
                number,
                false,
                &serde_json::to_vec(&claim).expect("serializable"),
            ),
        };
        match log.publish(expected, &[message]) {
            Ok(()) => {}
            Err(PublishFailure {
                error: LogError::WrongLastSequence { .. },
                ..
            }) => {
                view.catch_up(&*log, &mut apply)?;
                let current = view.epoch().cloned().unwrap_or(Epoch {
                    number: 0,
                    host: String::new(),
                });
                return Err(ClaimError::Lost { current });
            }
            Err(f) => return Err(ClaimError::View(ViewError::Log(f.error))),
        }
        // Our claim is the next entry; reading it makes the view's epoch ours.
        view.catch_up(&*log, &mut apply)?;
        Ok(Self {
            log,
            host: host.to_string(),
            epoch: number,
            next: expected + 2,
            uncertain: None,
            part_bytes: PART_BYTES_MAX,
        })
    }

    /// Splits entries into parts of at most `bytes` (tests use small parts).
    pub fn with_part_bytes(mut self, bytes: usize) -> Self {
        self.part_bytes = bytes.max(1);
        self
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The log this owner writes.
    pub fn log(&self) -> &L {
        &self.log
    }

    /// The sequence the next message gets (one past the owner's last).
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Whether a write's outcome is unknown ([`Owner::retry`] before writing on).
    pub fn is_uncertain(&self) -> bool {
        self.uncertain.is_some()
    }

    /// Stores one entry (in parts if large); answers the sequence of its last part.
    pub fn write(&mut self, kind: EntryKind, body: &[u8]) -> Result<u64, WriteError> {
        if self.uncertain.is_some() {
            return Err(WriteError::Unavailable(
                "an earlier write's outcome is unknown: retry it first".into(),
            ));
        }
        let chunks: Vec<&[u8]> = if body.is_empty() {
            vec![body]
        } else {
            body.chunks(self.part_bytes).collect()
        };
        let last = chunks.len() - 1;
        let parts = chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| Outgoing {
                kind,
                msg_id: msg_id(&self.host, self.epoch, self.next + i as u64),
                payload: frame(self.epoch, i < last, chunk),
            })
            .collect();
        self.publish(parts)
    }

    /// Publishes the write whose answer was lost again, exactly as it was.
    pub fn retry(&mut self) -> Result<u64, WriteError> {
        match self.uncertain.take() {
            Some(parts) => self.publish(parts),
            None => Ok(self.next - 1),
        }
    }

    fn publish(&mut self, parts: Vec<Outgoing>) -> Result<u64, WriteError> {
        match self.log.publish(self.next - 1, &parts) {
            Ok(()) => {
                self.next += parts.len() as u64;
                Ok(self.next - 1)
            }
            Err(PublishFailure { error, .. }) => match error {
                LogError::WrongLastSequence { .. } => Err(WriteError::Fenced { epoch: self.epoch }),
                LogError::Unavailable(why) => {
                    self.uncertain = Some(parts);
                    Err(WriteError::Unavailable(why))
                }
                LogError::Refused(why) => Err(WriteError::Refused(why)),
            },
        }
    }
}

/// `<host>.<epoch>.<seq>`: unique per writer position (two claimants of the same epoch at
/// the same sequence differ by host, so dedup never answers one with the other's entry).
fn msg_id(host: &str, epoch: u64, seq: u64) -> String {
    format!("{host}.{epoch}.{seq}")
}

#[cfg(test)]
mod tests {
    use super::super::log::{MemoryLog, Mode};
    use super::*;

    /// Claims `log` for `host` over epoch `over` with a fresh view, applying nothing.
    fn claim(log: &Arc<MemoryLog>, host: &str, over: u64) -> Owner<MemoryLog> {
        Owner::claim(Arc::clone(log), host, &mut LogView::default(), over, |_| {
            Ok(())
        })
        .unwrap()
    }

    fn bodies(log: &MemoryLog) -> Vec<(EntryKind, Vec<u8>)> {
        let mut view = LogView::default();
        let mut out = Vec::new();
        view.catch_up(log, |e| {
            out.push((e.kind, e.body.clone()));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn a_later_claim_fences_the_previous_owner() {
        let log = Arc::new(MemoryLog::default());
        let mut a = claim(&log, "a", 0);
        a.write(EntryKind::In, b"one").unwrap();
        let mut b = claim(&log, "b", 1);
        assert_eq!((a.epoch(), b.epoch()), (1, 2));
        assert_eq!(
            a.write(EntryKind::In, b"zombie"),
            Err(WriteError::Fenced { epoch: 1 })
        );
        b.write(EntryKind::In, b"two").unwrap();
        assert_eq!(
            bodies(&log),
            [
                (EntryKind::In, b"one".to_vec()),
                (EntryKind::In, b"two".to_vec())
            ]
        );
    }

    #[test]
    fn a_claim_at_an_epoch_never_goes_below_one_stored() {
        let log = Arc::new(MemoryLog::default());
        let at = |host: &str, n| {
            Owner::claim_as(
                Arc::clone(&log),
                host,
                &mut LogView::default(),
                Claim::At(n),
                |_| Ok(()),
            )
        };
        let mut a = at("a", 5).unwrap();
        assert_eq!(a.epoch(), 5);
        a.write(EntryKind::In, b"one").unwrap();
        // A claimant of an older module epoch loses; so does one of the same epoch.
        for n in [4, 5] {
            assert!(matches!(at("b", n), Err(ClaimError::Lost { current }) if current.number == 5));
        }
        let mut c = at("c", 7).unwrap();
        assert_eq!(
            a.write(EntryKind::In, b"zombie"),
            Err(WriteError::Fenced { epoch: 5 })
        );
        c.write(EntryKind::In, b"two").unwrap();
        assert_eq!(bodies(&log).len(), 2);
    }

    /// The current claim found in one lookup is the one a read of the whole log ends at,
    /// with entries of several epochs after their claims.
    #[test]
    fn the_latest_claim_is_the_one_a_full_read_ends_at() {
        let log = Arc::new(MemoryLog::default());
        assert_eq!(latest_claim(&*log).unwrap(), None);
        let mut a = claim(&log, "a", 0);
        a.write(EntryKind::In, b"one").unwrap();
        assert_eq!(latest_claim(&*log).unwrap().map(|e| e.number), Some(1));
        let mut b = claim(&log, "b", 1);
        b.write(EntryKind::Fx, b"two").unwrap();
        b.write(EntryKind::In, b"three").unwrap();
        let mut view = LogView::default();
        view.catch_up(&*log, |_| Ok(())).unwrap();
        let latest = latest_claim(&*log).unwrap();
        assert_eq!(latest.as_ref(), view.epoch());
        assert_eq!(
            latest,
            Some(Epoch {
                number: 2,
                host: "b".into()
            })
        );
    }

    #[test]
    fn rival_claims_from_the_same_read_have_one_winner() {
        let log = Arc::new(MemoryLog::default());
        let (mut va, mut vb) = (LogView::default(), LogView::default());
        va.catch_up(&*log, |_| Ok(())).unwrap();
        vb.catch_up(&*log, |_| Ok(())).unwrap();
        let a = Owner::claim(Arc::clone(&log), "a", &mut va, 0, |_| Ok(()));
        let b = Owner::claim(Arc::clone(&log), "b", &mut vb, 0, |_| Ok(()));
        assert!(a.is_ok());
        let Err(ClaimError::Lost { current }) = b else {
            panic!("both claims won")
        };
        assert_eq!(current.host, "a");
    }

    #[test]
    fn large_entries_come_back_whole_and_unfinished_ones_are_dropped() {
        let log = Arc::new(MemoryLog::default());
        let mut a = claim(&log, "a", 0).with_part_bytes(4);
        let seq = a.write(EntryKind::Fx, b"0123456789").unwrap();
        assert_eq!(seq, 4, "claim + three parts");
        // A writer that dies after one part of three: the next claim drops the group.
        log.publish(
            4,
            &[Outgoing {
                kind: EntryKind::Fx,
                msg_id: "a.1.5".into(),
                payload: frame(1, true, b"half"),
            }],
        )
        .unwrap();
        let mut view = LogView::default();
        let mut seen = Vec::new();
        let _b = Owner::claim(Arc::clone(&log), "b", &mut view, 1, |e| {
            seen.push(e.body.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [b"0123456789".to_vec()]);
        assert_eq!(view.epoch().unwrap().host, "b");
    }

    #[test]
    fn a_lost_answer_is_retried_into_one_entry() {
        let log = Arc::new(MemoryLog::default());
        let mut a = claim(&log, "a", 0);
        log.set_mode(Mode::LoseAnswers);
        assert!(matches!(
            a.write(EntryKind::In, b"x"),
            Err(WriteError::Unavailable(_))
        ));
        assert!(a.write(EntryKind::In, b"y").is_err(), "must retry first");
        log.set_mode(Mode::Up);
        assert_eq!(a.retry().unwrap(), 2);
        a.write(EntryKind::In, b"y").unwrap();
        assert_eq!(
            bodies(&log),
            [
                (EntryKind::In, b"x".to_vec()),
                (EntryKind::In, b"y".to_vec())
            ]
        );
    }

    #[test]
    fn an_entry_of_an_old_epoch_after_a_claim_is_damage() {
        let log = Arc::new(MemoryLog::default());
        let _a = claim(&log, "a", 0);
        let _b = claim(&log, "b", 1);
        // Written around the fence (a broken log would let this through).
        log.publish(
            2,
            &[Outgoing {
                kind: EntryKind::In,
                msg_id: "a.1.3".into(),
                payload: frame(1, false, b"late"),
            }],
        )
        .unwrap();
        let err = LogView::default().catch_up(&*log, |_| Ok(())).unwrap_err();
        assert!(matches!(err, ViewError::Damaged { seq: 3, .. }), "{err}");
    }
}
