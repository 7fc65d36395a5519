//! Event trees: what a `full` ack waits for.
//!
//! Each `full`-acked record starts a tree of work: its handlers, then the hops they caused,
//! recursively. A [`Tree`] counts the work outstanding; every hop is counted before it is sent
//! and every item is counted off after the commit holding its effects. Invariants: the ack is
//! answered once, when the count reaches zero, and only then with success; a tree dropped
//! before that (its work was lost with a partition that restarted, and resumes from durable
//! state without it) answers [`ProcessingError::OutcomeUnknown`] — never a false ack, never a
//! hanging request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::work::{AppendOutcome, ProcessingError, Reply};
use crate::runtime::GuestError;
use crate::value::Value;

/// The in-memory state of one record's event tree.
pub struct Tree {
    outstanding: AtomicUsize,
    partition: u32,
    offset: u64,
    reply: Mutex<Option<Reply>>,
    results: Mutex<BTreeMap<String, Value>>,
    error: Mutex<Option<ProcessingError>>,
    /// The module's count of trees alive (a module update drains it to zero).
    open: Arc<AtomicUsize>,
}

impl Drop for Tree {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.get_mut().map(Option::take).ok().flatten() {
            let _ = reply.send(Err(ProcessingError::OutcomeUnknown {
                partition: self.partition,
                offset: self.offset,
                reason: "a partition working on its event tree restarted; the work resumes from durable state".into(),
            }));
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Tree {
    pub fn new(reply: Reply, partition: u32, offset: u64, open: &Arc<AtomicUsize>) -> Arc<Self> {
        open.fetch_add(1, Ordering::AcqRel);
        Arc::new(Self {
            open: Arc::clone(open),
            outstanding: AtomicUsize::new(1),
            partition,
            offset,
            reply: Mutex::new(Some(reply)),
            results: Mutex::new(BTreeMap::new()),
            error: Mutex::new(None),
        })
    }

    /// Counts `n` more units of work (hops about to be sent).
    pub fn add(&self, n: usize) {
        self.outstanding.fetch_add(n, Ordering::AcqRel);
    }

    /// One unit of the tree's work finished; the last one answers the ack.
    pub fn finish_one(&self) {
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let Some(reply) = self.reply.lock().expect("poisoned").take() else {
            return;
        };
        let outcome = match self.error.lock().expect("poisoned").take() {
            Some(e) => Err(e),
            None => Ok(AppendOutcome {
                partition: self.partition,
                offset: self.offset,
                results: std::mem::take(&mut *self.results.lock().expect("poisoned")),
                replayed: false,
            }),
        };
        let _ = reply.send(outcome);
    }

    /// Records a handler failure; the ack answers it when the tree finishes.
    pub fn fail(&self, topology: &str, error: GuestError) {
        self.error
            .lock()
            .expect("poisoned")
            .get_or_insert(ProcessingError::Topology {
                partition: self.partition,
                offset: self.offset,
                topology: topology.to_string(),
                error,
            });
    }

    /// Records a handler's ack-return value.
    pub fn result(&self, topology: &str, v: Value) {
        self.results
            .lock()
            .expect("poisoned")
            .insert(topology.to_string(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (
        Arc<Tree>,
        Arc<AtomicUsize>,
        tokio::sync::oneshot::Receiver<Result<AppendOutcome, ProcessingError>>,
    ) {
        let open = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Tree::new(tx, 3, 7, &open), open, rx)
    }

    #[test]
    fn answers_once_when_the_last_unit_finishes() {
        let (t, open, mut rx) = tree();
        t.add(2);
        t.finish_one();
        t.finish_one();
        assert!(rx.try_recv().is_err(), "answered with work outstanding");
        t.result("top", Value::Integer(5.into()));
        t.finish_one();
        let ok = rx.try_recv().unwrap().unwrap();
        assert_eq!((ok.partition, ok.offset), (3, 7));
        assert_eq!(ok.results["top"], Value::Integer(5.into()));
        assert_eq!(open.load(Ordering::Acquire), 1);
        drop(t);
        assert_eq!(open.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_dropped_unfinished_tree_answers_outcome_unknown() {
        let (t, open, mut rx) = tree();
        t.add(1);
        t.finish_one();
        drop(t);
        match rx.try_recv().unwrap() {
            Err(ProcessingError::OutcomeUnknown {
                partition, offset, ..
            }) => assert_eq!((partition, offset), (3, 7)),
            other => panic!("expected outcome unknown, got {other:?}"),
        }
        assert_eq!(open.load(Ordering::Acquire), 0);
    }
}
