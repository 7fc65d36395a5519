//! The change hub of one partition's PState store: which feeds watch it, and telling them
//! about each commit.
//!
//! The partition's worker calls [`ChangeHub::published`] right after every commit that wrote
//! PState entries (stream batches and microbatch applies). It works out which top-level keys
//! the commit touched, and only if a feed watches one of them does it take one snapshot of
//! the store (a redb read transaction: the commit and nothing later) and hand it to those
//! feeds. That is all the writer pays: it never evaluates a path, never waits on a
//! subscriber, and with no feeds it pays one atomic load.
//!
//! Invariants: within one *incarnation* (a random number chosen when the hub is made and
//! again whenever positions could repeat), commit positions only grow, so `(incarnation,
//! position)` names one committed state; when a restarted partition resumes at a position
//! lower than one already published (its store dropped commits that were not durable), the
//! hub picks a new incarnation and every feed starts over with a `reset`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use super::feed::{Feed, Snap};
use crate::pstate::engine::Table;
use crate::pstate::key;
use crate::pstate::store::{Overlay, PStateStore};
use crate::pstate::Catalog;

/// Feeds by what they watch: `(PState, encoded top-level key)`, or `(PState, None)` for
/// paths that read across keys.
type Index = HashMap<(String, Option<Vec<u8>>), Vec<Arc<Feed>>>;

/// One partition's feeds and its current incarnation.
pub struct ChangeHub {
    feeds: Mutex<Index>,
    /// Feeds in the index, read without the lock by every commit.
    count: AtomicUsize,
    incarnation: AtomicU64,
    /// The highest position published in this incarnation.
    last_position: AtomicU64,
    /// The PState schemas the partition runs with now (set at every start: updates change it).
    catalog: RwLock<Option<Arc<Catalog>>>,
}

impl Default for ChangeHub {
    fn default() -> Self {
        Self {
            feeds: Mutex::new(HashMap::new()),
            count: AtomicUsize::new(0),
            incarnation: AtomicU64::new(new_incarnation()),
            last_position: AtomicU64::new(0),
            catalog: RwLock::new(None),
        }
    }
}

/// A number that differs between hubs and between incarnations of one hub.
fn new_incarnation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() & 0xffff_ffff
}

/// The top-level keys one commit wrote, per PState (`None`: the PState's top-level count,
/// which every path not starting with a key depends on).
fn touched(writes: &Overlay) -> HashSet<(&str, Option<&[u8]>)> {
    writes
        .keys()
        .map(|(pstate, table, k)| {
            let top = match table {
                Table::Main => Some(k.as_slice()),
                Table::Sub | Table::Size if k.is_empty() => None,
                Table::Sub | Table::Size => Some(&k[..key::first_len(k).unwrap_or(k.len())]),
            };
            (pstate.as_str(), top)
        })
        .collect()
}

impl ChangeHub {
    pub fn incarnation(&self) -> u64 {
        self.incarnation.load(Ordering::Acquire)
    }

    pub fn catalog(&self) -> Option<Arc<Catalog>> {
        self.catalog.read().expect("poisoned").clone()
    }

    /// Feeds watching this partition now.
    pub fn feeds(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// The partition (re)started at `position` with `catalog`. Positions above it that were
    /// published are gone (a crash of the partition's store): every feed starts over.
    pub fn started(&self, position: u64, catalog: Arc<Catalog>) {
        *self.catalog.write().expect("poisoned") = Some(catalog);
        if position < self.last_position.load(Ordering::Acquire) {
            self.new_incarnation(position);
        }
    }

    fn new_incarnation(&self, position: u64) {
        self.incarnation.store(new_incarnation(), Ordering::Release);
        self.last_position.store(position, Ordering::Release);
        for f in self.feeds.lock().expect("poisoned").values().flatten() {
            f.reset("the partition restarted and its newest state was rebuilt from the depot log");
        }
    }

    /// Called by the partition's worker after the commit at `position` holding `writes`.
    pub fn published(&self, store: &PStateStore, position: u64, writes: &Overlay) {
        if position == 0 {
            return;
        }
        if position <= self.last_position.load(Ordering::Acquire) {
            // A position seen before names another state now (a replay after lost commits).
            self.new_incarnation(position - 1);
        }
        self.last_position.store(position, Ordering::Release);
        if self.count.load(Ordering::Relaxed) == 0 || writes.is_empty() {
            return;
        }
        let touched = touched(writes);
        let pstates: HashSet<&str> = touched.iter().map(|(p, _)| *p).collect();
        let mut interested: Vec<Arc<Feed>> = Vec::new();
        {
            let mut feeds = self.feeds.lock().expect("poisoned");
            let now = Instant::now();
            let watched = touched
                .iter()
                .filter_map(|(p, k)| k.map(|k| (p.to_string(), Some(k.to_vec()))))
                .chain(pstates.iter().map(|p| (p.to_string(), None)));
            for at in watched {
                if let Some(bucket) = feeds.get_mut(&at) {
                    bucket.retain(|f| !f.expired(now));
                    interested.extend(bucket.iter().cloned());
                }
            }
            self.reindex(&mut feeds);
        }
        if interested.is_empty() {
            return;
        }
        let snap = match store.begin_read() {
            Ok(txn) => Arc::new(Snap {
                incarnation: self.incarnation(),
                position,
                txn,
            }),
            Err(e) => {
                for f in &interested {
                    f.fail("storage", &format!("reading the committed state: {e}"));
                }
                return;
            }
        };
        for f in interested {
            f.offer(Arc::clone(&snap));
        }
    }

    /// Drops empty buckets and recounts.
    fn reindex(&self, feeds: &mut Index) {
        feeds.retain(|_, b| !b.is_empty());
        self.count
            .store(feeds.values().map(Vec::len).sum(), Ordering::Relaxed);
    }

    /// The feed of `path_key` watching `at` on this partition, made by `make` if there is
    /// none. Feeds without subscribers past their linger are dropped here.
    pub fn feed(
        &self,
        at: (String, Option<Vec<u8>>),
        path_key: &str,
        make: impl FnOnce() -> Arc<Feed>,
    ) -> Arc<Feed> {
        let mut feeds = self.feeds.lock().expect("poisoned");
        let now = Instant::now();
        for bucket in feeds.values_mut() {
            bucket.retain(|f| !f.expired(now));
        }
        let bucket = feeds.entry(at).or_default();
        let f = match bucket.iter().find(|f| f.path_key == path_key) {
            Some(f) => Arc::clone(f),
            None => {
                let f = make();
                bucket.push(Arc::clone(&f));
                f
            }
        };
        self.reindex(&mut feeds);
        f
    }

    /// Ends every feed (the module is being deleted): subscribers get a final `error` event.
    pub fn close(&self, code: &str, reason: &str) {
        let feeds = std::mem::take(&mut *self.feeds.lock().expect("poisoned"));
        self.count.store(0, Ordering::Relaxed);
        for f in feeds.into_values().flatten() {
            f.fail(code, reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Value;

    #[test]
    fn a_commit_touches_the_top_level_keys_of_every_table() {
        let k = |s: &str| key::encode(&Value::Text(s.into())).unwrap();
        let mut w = Overlay::new();
        w.insert(("p".into(), Table::Main, k("a")), None);
        let mut sub = k("b");
        sub.extend(key::encode(&Value::Integer(3.into())).unwrap());
        w.insert(("p".into(), Table::Sub, sub), None);
        w.insert(("p".into(), Table::Size, Vec::new()), None);
        w.insert(("q".into(), Table::Main, k("a")), None);
        let t = touched(&w);
        assert!(t.contains(&("p", Some(k("a").as_slice()))));
        assert!(t.contains(&("p", Some(k("b").as_slice()))));
        assert!(t.contains(&("p", None)));
        assert!(t.contains(&("q", Some(k("a").as_slice()))));
        assert_eq!(t.len(), 4);
    }
}
