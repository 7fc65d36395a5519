//! The partition worker: one thread per (module, partition).
//!
//! Loop: take what is queued (up to `batch_records_max`), append it to the depot log in one
//! fsynced commit (group commit), answer `append` acks, run each subscribed stream topology's
//! handler on each record, commit the PState writes together with the new processed offsets in
//! one fsynced commit, answer `full` acks. On start it first replays, from each topology's
//! processed offset, the records the PState store does not yet reflect — so after a crash
//! everything acked is restored, each record's effects applied exactly once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::StreamTopology;
use crate::depot::log::DepotLog;
use crate::pstate::store::DeadLetter;
use crate::pstate::PStateStore;
use crate::runtime::{GuestError, GuestInstance, RecordCtx};
use crate::value::{from_cbor, Value};

/// What an append waits for before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckLevel {
    /// Accepted into the partition's bounded queue.
    None,
    /// Durable in the depot log (fsync).
    Append,
    /// Every stream topology reading the depot finished it.
    Full,
}

impl AckLevel {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(AckLevel::None),
            "append" => Some(AckLevel::Append),
            "full" => Some(AckLevel::Full),
            _ => None,
        }
    }
}

/// A successful append.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendOutcome {
    pub partition: u32,
    pub offset: u64,
    /// Ack-return values by topology (only for `full` acks, only topologies that set one).
    pub results: BTreeMap<String, Value>,
}

/// An append that was not (fully) carried out.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ProcessingError {
    /// The record is durable at (partition, offset) but a topology failed on it; it is in that
    /// topology's dead letters.
    #[error(
        "record {partition}/{offset} is stored, but topology `{topology}` failed on it: {error}"
    )]
    Topology {
        partition: u32,
        offset: u64,
        topology: String,
        error: GuestError,
    },
    /// Storage failed; the record was not acknowledged.
    #[error("storage failure on partition {partition}: {message}")]
    Storage { partition: u32, message: String },
}

pub type Reply = oneshot::Sender<Result<AppendOutcome, ProcessingError>>;

/// Work queued for a partition worker.
pub enum Work {
    Append {
        depot: Arc<str>,
        /// The record as CBOR.
        record: Vec<u8>,
        ack: AckLevel,
        reply: Option<Reply>,
    },
}

/// Everything a worker owns.
pub struct Worker {
    pub module: Arc<str>,
    pub partition: u32,
    pub partitions: u32,
    pub log: Arc<DepotLog>,
    pub store: Arc<PStateStore>,
    pub instance: GuestInstance,
    pub topologies: Arc<Vec<StreamTopology>>,
    pub batch_records_max: usize,
    pub handler_attempts_max: u32,
    /// How long PState commits may stay non-durable (see [`PStateStore::commit`]).
    pub pstate_flush_interval: Duration,
    /// Set once recovery finished; selects wait for it.
    pub ready: Arc<AtomicBool>,
    pub rx: Receiver<Work>,
}

/// When PState commits were last made durable.
struct Flush {
    last_durable: Instant,
    dirty: bool,
}

struct Item {
    depot: Arc<str>,
    offset: u64,
    record: Vec<u8>,
    ack: AckLevel,
    reply: Option<Reply>,
}

impl Worker {
    pub fn run(mut self) {
        let mut next: HashMap<String, u64> = HashMap::new();
        let mut flush = Flush {
            last_durable: Instant::now(),
            dirty: false,
        };
        if let Err(e) = self
            .recover(&mut flush)
            .and_then(|()| self.flush(&mut flush))
        {
            tracing::error!(
                module = &*self.module,
                partition = self.partition,
                "recovery failed: {e}"
            );
            return;
        }
        self.ready.store(true, Ordering::Release);
        loop {
            let first = match self
                .rx
                .recv_timeout(self.pstate_flush_interval.max(Duration::from_millis(1)))
            {
                Ok(w) => w,
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.flush(&mut flush) {
                        tracing::error!(
                            module = &*self.module,
                            partition = self.partition,
                            "PState flush failed, stopping the partition: {e}"
                        );
                        return;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut work = vec![first];
            while work.len() < self.batch_records_max {
                match self.rx.try_recv() {
                    Ok(w) => work.push(w),
                    Err(_) => break,
                }
            }
            let records: Vec<(&str, &[u8])> = work
                .iter()
                .map(|Work::Append { depot, record, .. }| (&**depot, record.as_slice()))
                .collect();
            let offsets = match self.log.append(&records, &mut next) {
                Ok(o) => o,
                Err(e) => {
                    let err = ProcessingError::Storage {
                        partition: self.partition,
                        message: e.to_string(),
                    };
                    tracing::error!(
                        module = &*self.module,
                        partition = self.partition,
                        "depot append failed: {e}"
                    );
                    for Work::Append { reply, .. } in work {
                        if let Some(r) = reply {
                            let _ = r.send(Err(err.clone()));
                        }
                    }
                    continue;
                }
            };
            let mut items = Vec::with_capacity(work.len());
            for (
                Work::Append {
                    depot,
                    record,
                    ack,
                    reply,
                },
                offset,
            ) in work.into_iter().zip(offsets)
            {
                let mut reply = reply;
                if ack == AckLevel::Append {
                    if let Some(r) = reply.take() {
                        let _ = r.send(Ok(AppendOutcome {
                            partition: self.partition,
                            offset,
                            results: BTreeMap::new(),
                        }));
                    }
                }
                items.push(Item {
                    depot,
                    offset,
                    record,
                    ack,
                    reply,
                });
            }
            if let Err(e) = self.process(items, &mut flush) {
                tracing::error!(
                    module = &*self.module,
                    partition = self.partition,
                    "PState commit failed, stopping the partition: {e}"
                );
                return;
            }
        }
        if let Err(e) = self.flush(&mut flush) {
            tracing::error!(
                module = &*self.module,
                partition = self.partition,
                "final PState flush failed: {e}"
            );
        }
    }

    /// Makes every earlier PState commit durable, if any was not.
    fn flush(&mut self, flush: &mut Flush) -> Result<(), redb::Error> {
        if flush.dirty {
            self.store.commit(Default::default(), true)?;
        }
        flush.dirty = false;
        flush.last_durable = Instant::now();
        Ok(())
    }

    /// Runs the topologies on `items` (already durable in the log), commits, answers acks.
    fn process(&mut self, items: Vec<Item>, flush: &mut Flush) -> Result<(), redb::Error> {
        self.process_filtered(items, None, flush)
    }

    /// `process`, skipping topology t for a record when `done[(t, depot)]` is past its offset.
    fn process_filtered(
        &mut self,
        items: Vec<Item>,
        done: Option<&HashMap<(String, String), u64>>,
        flush: &mut Flush,
    ) -> Result<(), redb::Error> {
        let mut batch_offsets = BTreeMap::new();
        let mut dead_letters = Vec::new();
        let mut outcomes = Vec::with_capacity(items.len());
        for item in &items {
            let mut results = BTreeMap::new();
            let mut failure = None;
            for t in Arc::clone(&self.topologies).iter() {
                if !t.depots.iter().any(|d| **d == *item.depot) {
                    continue;
                }
                if let Some(done) = done {
                    let key = (t.name.clone(), item.depot.to_string());
                    if done.get(&key).is_some_and(|&p| item.offset < p) {
                        continue;
                    }
                }
                match self.run_handler(t, &item.depot, item.offset, &item.record) {
                    Ok(Some(v)) => {
                        results.insert(t.name.clone(), v);
                    }
                    Ok(None) => {}
                    Err((error, attempts)) => {
                        dead_letters.push(DeadLetter {
                            topology: t.name.clone(),
                            depot: item.depot.to_string(),
                            offset: item.offset,
                            error_code: error.code.clone(),
                            error: error.message.clone(),
                            attempts,
                        });
                        failure.get_or_insert(ProcessingError::Topology {
                            partition: self.partition,
                            offset: item.offset,
                            topology: t.name.clone(),
                            error,
                        });
                    }
                }
                batch_offsets.insert((t.name.clone(), item.depot.to_string()), item.offset + 1);
            }
            outcomes.push(match failure {
                Some(f) => Err(f),
                None => Ok(AppendOutcome {
                    partition: self.partition,
                    offset: item.offset,
                    results,
                }),
            });
        }
        let session = self
            .instance
            .session_mut()
            .as_mut()
            .expect("workers always have a session");
        let mut batch = session.take_batch();
        batch.offsets = batch_offsets;
        batch.dead_letters = dead_letters;
        let durable = flush.last_durable.elapsed() >= self.pstate_flush_interval;
        if let Err(e) = self.store.commit(batch, durable) {
            let err = ProcessingError::Storage {
                partition: self.partition,
                message: e.to_string(),
            };
            for item in items {
                if let Some(r) = item.reply {
                    let _ = r.send(Err(err.clone()));
                }
            }
            return Err(e);
        }
        if durable {
            flush.last_durable = Instant::now();
            flush.dirty = false;
        } else {
            flush.dirty = true;
        }
        for (item, outcome) in items.into_iter().zip(outcomes) {
            if let (AckLevel::Full, Some(r)) = (item.ack, item.reply) {
                let _ = r.send(outcome);
            }
        }
        Ok(())
    }

    /// Runs one handler on one record with retries; on success keeps its writes.
    fn run_handler(
        &mut self,
        topology: &StreamTopology,
        depot: &str,
        offset: u64,
        record: &[u8],
    ) -> Result<Option<Value>, (GuestError, u32)> {
        const RETRY_BACKOFF_BASE_MS: u64 = 5;
        let ctx = RecordCtx {
            depot,
            partition: self.partition,
            offset,
            partitions: self.partitions,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self
                .instance
                .handle(&topology.name, &topology.handler, record, ctx);
            let session = self
                .instance
                .session_mut()
                .as_mut()
                .expect("workers always have a session");
            match result {
                Ok(ack) => {
                    session.end_record(true);
                    let value = match ack.map(|bytes| from_cbor(&bytes)).transpose() {
                        Ok(v) => v,
                        Err(e) => {
                            return Err((
                                GuestError {
                                    code: "invalid-value".into(),
                                    message: format!("ack-return value: {e}"),
                                },
                                attempt,
                            ))
                        }
                    };
                    return Ok(value);
                }
                Err(e) => {
                    session.end_record(false);
                    tracing::warn!(
                        module = &*self.module,
                        partition = self.partition,
                        topology = topology.name,
                        offset,
                        attempt,
                        "handler failed: {e}"
                    );
                    if attempt >= self.handler_attempts_max {
                        return Err((e, attempt));
                    }
                    std::thread::sleep(Duration::from_millis(
                        RETRY_BACKOFF_BASE_MS << attempt.min(6),
                    ));
                }
            }
        }
    }

    /// Replays records the PState store does not reflect yet (after a crash or kill).
    fn recover(&mut self, flush: &mut Flush) -> Result<(), redb::Error> {
        let mut depots: BTreeMap<String, u64> = BTreeMap::new();
        for t in self.topologies.iter() {
            for d in &t.depots {
                let processed = self.store.processed_offset(&t.name, d)?;
                let e = depots.entry(d.clone()).or_insert(processed);
                *e = (*e).min(processed);
            }
        }
        let mut replayed = 0u64;
        for (depot, from) in depots {
            let depot: Arc<str> = depot.into();
            let mut from = from;
            loop {
                let records = self.log.read(&depot, from, self.batch_records_max)?;
                let Some(last) = records.last().map(|(o, _)| *o) else {
                    break;
                };
                replayed += records.len() as u64;
                let items = records
                    .into_iter()
                    .map(|(offset, record)| Item {
                        depot: Arc::clone(&depot),
                        offset,
                        record,
                        ack: AckLevel::None,
                        reply: None,
                    })
                    .collect();
                self.process_replay(items, flush)?;
                from = last + 1;
            }
        }
        if replayed > 0 {
            tracing::info!(
                module = &*self.module,
                partition = self.partition,
                replayed,
                "replayed records after restart"
            );
        }
        Ok(())
    }

    /// Like `process`, but skips each topology for records it already reflects.
    fn process_replay(&mut self, items: Vec<Item>, flush: &mut Flush) -> Result<(), redb::Error> {
        let mut done: HashMap<(String, String), u64> = HashMap::new();
        for t in self.topologies.iter() {
            for d in &t.depots {
                done.insert(
                    (t.name.clone(), d.clone()),
                    self.store.processed_offset(&t.name, d)?,
                );
            }
        }
        self.process_filtered(items, Some(&done), flush)
    }
}
