//! Tick depots: the partition appends a tick record to each of its tick depots every
//! interval, so topologies reading them run on a schedule.
//!
//! A tick is `{"time": T, "since": S, "ticks": N}`: T is the interval boundary at or before
//! the clock's wall time, S the previous tick's T on this partition (null for the first),
//! N = (T - S) / interval (1 for the first). The time comes from the log, never from a clock
//! the handler reads, so a replay sees the same tick. Invariants: a partition appends a tick
//! for a given T at most once, across crashes and restarts (the last T is read back from the
//! log at start, and a tick is appended only for a later T); ticks missed while the host was
//! down are not run one by one: the first tick after the gap carries it (N > 1).

use std::sync::Arc;

use super::core::{Partition, PartitionError};
use super::seams::{Executor, HopTransport, PartitionLog, PartitionStore};
use super::work::{AckLevel, Work};
use crate::value::{from_cbor, to_cbor, Value};

/// The record of the tick at `time` following the one at `since`.
pub fn tick_record(time: u64, since: Option<u64>, interval_ms: u64) -> Vec<u8> {
    let ticks = since.map_or(1, |s| (time - s) / interval_ms.max(1));
    let text = |s: &str| Value::Text(s.into());
    to_cbor(&Value::Map(vec![
        (text("time"), Value::Integer(time.into())),
        (
            text("since"),
            since.map_or(Value::Null, |s| Value::Integer(s.into())),
        ),
        (text("ticks"), Value::Integer(ticks.into())),
    ]))
}

/// The `time` of a stored tick record.
fn tick_time(record: &[u8]) -> Option<u64> {
    let Value::Map(entries) = from_cbor(record).ok()? else {
        return None;
    };
    entries.into_iter().find_map(|(k, v)| match (k, v) {
        (Value::Text(k), Value::Integer(t)) if k == "time" => u64::try_from(t).ok(),
        _ => None,
    })
}

impl<X: Executor, L: PartitionLog, S: PartitionStore, T: HopTransport> Partition<X, L, S, T> {
    /// Reads each tick depot's last tick time from the log.
    pub(super) fn load_ticks(&mut self) -> Result<(), PartitionError> {
        let ticks = self.cfg.ticks.clone();
        for (depot, _) in ticks {
            let end = self.log.end(&depot).map_err(PartitionError::Log)?;
            let last = match end.checked_sub(1) {
                None => None,
                Some(o) => {
                    let read = self.log.read(&depot, o, 1).map_err(PartitionError::Log)?;
                    let record = read.into_iter().next().map(|(_, r)| r);
                    let time = record.as_deref().and_then(tick_time);
                    if time.is_none() {
                        return Err(PartitionError::Lost(format!(
                            "tick depot `{depot}`: offset {o} holds no tick record"
                        )));
                    }
                    time
                }
            };
            self.tick_last.insert(depot, last);
        }
        Ok(())
    }

    /// Milliseconds until the next tick is due (`None`: no tick depot).
    pub fn next_tick_in_ms(&self) -> Option<u64> {
        let now = self.clock.wall_ms();
        self.cfg
            .ticks
            .iter()
            .map(|(depot, interval)| {
                let last = self.tick_last.get(depot).copied().flatten();
                match last {
                    None => 0,
                    Some(l) => (l + interval).saturating_sub(now),
                }
            })
            .min()
    }

    /// Appends (durably) and processes the ticks that are due.
    pub(super) fn append_due_ticks(&mut self) -> Result<(), PartitionError> {
        if self.cfg.ticks.is_empty() {
            return Ok(());
        }
        let now = self.clock.wall_ms();
        let mut work = Vec::new();
        for (depot, interval) in &self.cfg.ticks {
            let due = now / interval * interval;
            let last = self.tick_last.get(depot).copied().flatten();
            if last.is_some_and(|l| due <= l) {
                continue;
            }
            work.push(Work::Append {
                depot: Arc::clone(depot),
                record: tick_record(due, last, *interval),
                ack: AckLevel::None,
                reply: None,
                key: None,
            });
            // If the append fails the partition restarts and reads the log again.
            self.tick_last.insert(Arc::clone(depot), Some(due));
        }
        if work.is_empty() {
            return Ok(());
        }
        self.step_appends(work)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_after_a_gap_carries_it() {
        let first = tick_record(60_000, None, 60_000);
        assert_eq!(tick_time(&first), Some(60_000));
        let v = from_cbor(&tick_record(300_000, Some(60_000), 60_000)).unwrap();
        assert_eq!(
            crate::value::to_json(&v),
            serde_json::json!({"time": 300_000, "since": 60_000, "ticks": 4})
        );
        let v = from_cbor(&first).unwrap();
        assert_eq!(
            crate::value::to_json(&v),
            serde_json::json!({"time": 60_000, "since": null, "ticks": 1})
        );
    }
}
