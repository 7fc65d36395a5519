//! PState migrations: a new module version turns stored values into its new shape with guest
//! code (`migrate`), while the partition keeps serving.
//!
//! An update that changes a PState's schema and declares its migration writes, on every
//! partition, a [`Record`] (pseudo-PState [`RECORDS`]: from/to schema, cursor, counts) before the
//! new version starts. From then on, for that partition, a top-level entry is **old** (stored in
//! the previous shape) iff its key is at or past the cursor and not in the partition's
//! *migrated-ahead* set ([`ahead`]); every other entry is in the new shape.
//! - **Reads migrate old entries on the fly** ([`Migrating`], a [`View`] wrapper used by every
//!   engine: handler sessions, HTTP selects, queries, subscriptions), so every reader sees the
//!   new shape at once. `migrate` runs in instances of its own ([`Migrator`]), never inside the
//!   guest call that reads.
//! - **A write to an old entry** (through a session) also marks its key migrated-ahead, in the
//!   same overlay, hence the same commit.
//! - **The background rewrite** ([`step`]), run by the partition worker between batches, takes
//!   the next [`STEP_ENTRIES_MAX`] entries from the cursor, rewrites the old ones, moves the
//!   cursor past them and drops the ahead marks below it — one transaction.
//!
//! Invariant: a stored value is migrated at most once — an entry leaves the old set (cursor
//! moved past it, or marked ahead) in the very transaction that stores its new shape, and a
//! crash rolls both back together. Only whole top-level values migrate: a PState with a
//! subindexed collection cannot declare a migration (refused at deploy).

use std::sync::Arc;

use super::engine::{Table, View, ViewMut};
use super::path::EncodedRange;
use super::store::{Overlay, PStateStore};
use super::{AccessError, Catalog};
use crate::value::{as_i64, from_cbor, to_cbor, Value};

/// The pseudo-PState holding each migrating PState's [`Record`] (key: the PState's name).
pub const RECORDS: &str = "~migrations";
/// Entries one background step rewrites at most (a bounded pause of the partition).
pub const STEP_ENTRIES_MAX: usize = 64;

/// The pseudo-PState of `pstate`'s migrated-ahead keys (written in the new shape past the
/// cursor).
pub fn ahead(pstate: &str) -> String {
    format!("~migrated:{pstate}")
}

/// Runs a module's `migrate` on one stored value (key and value as CBOR).
pub trait Migrator: Send + Sync {
    fn migrate(&self, pstate: &str, key: &[u8], value: &[u8]) -> Result<Vec<u8>, MigrateError>;
}

/// Why a value was not migrated.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrateError {
    pub message: String,
    /// Not the value's fault (no instance, a deadline on a loaded host): try again later,
    /// rather than stopping the rewrite at it.
    pub transient: bool,
}

impl MigrateError {
    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: false,
        }
    }
}

/// The code of a read that met a value `migrate` could not run on just now.
const MIGRATION_UNAVAILABLE: &str = "migration-unavailable";

/// One partition's migration of one PState.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Record {
    /// The schema the stored values had, and the one they are migrated to.
    pub from: String,
    pub to: String,
    /// Entries at or past this encoded key (and not marked ahead) are old; `None`: all are.
    pub cursor: Option<Vec<u8>>,
    pub done: bool,
    /// Entries the background rewrite migrated so far.
    pub rewritten: u64,
    /// Top-level entries when the migration started.
    pub total: u64,
    /// Why the rewrite stopped: a value `migrate` refused (reads of it fail the same way).
    pub error: Option<String>,
}

impl Record {
    fn key(pstate: &str) -> Vec<u8> {
        super::key::encode(&Value::Text(pstate.to_string())).expect("text keys encode")
    }

    pub fn encode(&self) -> Value {
        let t = |s: &str| Value::Text(s.to_string());
        Value::Map(vec![
            (t("from"), t(&self.from)),
            (t("to"), t(&self.to)),
            (
                t("cursor"),
                self.cursor.clone().map_or(Value::Null, Value::Bytes),
            ),
            (t("done"), Value::Bool(self.done)),
            (t("rewritten"), Value::Integer(self.rewritten.into())),
            (t("total"), Value::Integer(self.total.into())),
            (
                t("error"),
                self.error.clone().map_or(Value::Null, Value::Text),
            ),
        ])
    }

    pub fn decode(v: &Value) -> Self {
        let field = |name: &str| crate::value::field(v, name).cloned();
        let text = |name: &str| match field(name) {
            Some(Value::Text(s)) => Some(s),
            _ => None,
        };
        let int = |name: &str| field(name).and_then(|v| as_i64(&v)).unwrap_or(0) as u64;
        Self {
            from: text("from").unwrap_or_default(),
            to: text("to").unwrap_or_default(),
            cursor: match field("cursor") {
                Some(Value::Bytes(b)) => Some(b),
                _ => None,
            },
            done: matches!(field("done"), Some(Value::Bool(true))),
            rewritten: int("rewritten"),
            total: int("total"),
            error: text("error"),
        }
    }

    /// Whether an entry with this encoded key is past the cursor.
    fn past_cursor(&self, key: &[u8]) -> bool {
        self.cursor.as_deref().is_none_or(|c| key >= c)
    }
}

/// The record of `pstate` in one view (`None`: no migration ever ran there).
pub fn record_in<V: View + ?Sized>(
    view: &mut V,
    pstate: &str,
) -> Result<Option<Record>, AccessError> {
    Ok(view
        .get(RECORDS, Table::Main, &Record::key(pstate))?
        .map(|v| Record::decode(&v)))
}

/// The record of `pstate` in the last commit of a partition's store.
pub fn record(store: &PStateStore, pstate: &str) -> Result<Option<Record>, AccessError> {
    let snapshot = store.begin_read()?;
    record_in(
        &mut super::session::SnapshotView {
            store,
            snapshot: &snapshot,
        },
        pstate,
    )
}

/// Starts a migration of `pstate` on one partition (the module is stopped: an update between
/// versions): a fresh record counting the entries to migrate, written durably.
pub fn begin(store: &PStateStore, pstate: &str, from: &str, to: &str) -> Result<(), AccessError> {
    let snapshot = store.begin_read()?;
    let mut total = 0u64;
    let mut start: Option<Vec<u8>> = None;
    loop {
        let range = EncodedRange {
            start: start.clone().map(|k| (k, false)),
            end: None,
        };
        let page = store.scan(&snapshot, pstate, Table::Main, &[], &range, false, 4096)?;
        total += page.len() as u64;
        match page.last() {
            Some((k, _)) if page.len() == 4096 => start = Some(k.clone()),
            _ => break,
        }
    }
    drop(snapshot);
    let r = Record {
        from: from.to_string(),
        to: to.to_string(),
        total,
        ..Record::default()
    };
    let mut overlay = Overlay::new();
    overlay.insert(
        (RECORDS.to_string(), Table::Main, Record::key(pstate)),
        Some(r.encode()),
    );
    // Marks of an earlier migration of this PState mean nothing to this one.
    for (k, _) in scan_all(store, &ahead(pstate))? {
        overlay.insert((ahead(pstate), Table::Main, k), None);
    }
    store.write(true, |txn| super::store::write_entries(txn, &overlay))?;
    Ok(())
}

fn scan_all(store: &PStateStore, pstate: &str) -> Result<Vec<(Vec<u8>, Value)>, AccessError> {
    let snapshot = store.begin_read()?;
    let all = EncodedRange {
        start: None,
        end: None,
    };
    Ok(store.scan(&snapshot, pstate, Table::Main, &[], &all, false, usize::MAX)?)
}

/// Clears a stopped migration's error so the rewrite tries again (each start of a partition
/// of a version declaring the migration: the fix may be in the new `migrate`).
pub fn resume(store: &PStateStore, pstate: &str) -> Result<(), AccessError> {
    let Some(mut r) = record(store, pstate)? else {
        return Ok(());
    };
    if r.error.take().is_none() {
        return Ok(());
    }
    let mut overlay = Overlay::new();
    overlay.insert(
        (RECORDS.to_string(), Table::Main, Record::key(pstate)),
        Some(r.encode()),
    );
    store.write(true, |txn| super::store::write_entries(txn, &overlay))?;
    Ok(())
}

/// Runs `migrate` on one stored value and checks the result against the new schema.
fn migrate_value(
    catalog: &Catalog,
    pstate: &str,
    key: &[u8],
    value: &Value,
) -> Result<Value, AccessError> {
    let failed = |why: String| {
        AccessError::new(
            "migration-failed",
            format!("PState `{pstate}`: migrating a stored value failed: {why}"),
        )
    };
    let migrator = catalog
        .migrator
        .as_ref()
        .ok_or_else(|| failed("this module version cannot migrate it".into()))?;
    let key = super::key::decode(key).map_err(|e| failed(e.to_string()))?;
    let out = migrator
        .0
        .migrate(pstate, &to_cbor(&key), &to_cbor(value))
        .map_err(|e| match e.transient {
            true => AccessError::new(
                MIGRATION_UNAVAILABLE,
                format!(
                    "PState `{pstate}`: a stored value could not be migrated just now: {}",
                    e.message
                ),
            ),
            false => failed(e.message),
        })?;
    let out = from_cbor(&out).map_err(|e| failed(format!("`migrate` answered {e}")))?;
    let schema = catalog.schema(pstate)?;
    let (_, value_schema) = schema.as_top_level().expect("validated: a top-level map");
    value_schema.normalize(out, pstate).map_err(|e| {
        failed(format!(
            "`migrate` answered a value the new schema refuses: {e}"
        ))
    })
}

/// A view in which the old entries of one migrating PState read in their new shape (see the
/// module docs); with no migration in force (`record: None`) it only passes through.
pub struct Migrating<'a, V: ?Sized> {
    pub inner: &'a mut V,
    pub catalog: &'a Catalog,
    pub pstate: &'a str,
    pub record: Option<Record>,
}

impl<V: View + ?Sized> Migrating<'_, V> {
    /// Whether an entry with this key is past the cursor of a migration in force.
    fn past_cursor(&self, key: &[u8]) -> bool {
        self.record.as_ref().is_some_and(|r| r.past_cursor(key))
    }

    fn is_old(&mut self, key: &[u8]) -> Result<bool, AccessError> {
        if !self.past_cursor(key) {
            return Ok(false);
        }
        Ok(self
            .inner
            .get(&ahead(self.pstate), Table::Main, key)?
            .is_none())
    }

    fn read(&mut self, key: &[u8], v: Value) -> Result<Value, AccessError> {
        if self.is_old(key)? {
            migrate_value(self.catalog, self.pstate, key, &v)
        } else {
            Ok(v)
        }
    }
}

impl<V: View + ?Sized> View for Migrating<'_, V> {
    fn get(&mut self, pstate: &str, t: Table, key: &[u8]) -> Result<Option<Value>, AccessError> {
        let v = self.inner.get(pstate, t, key)?;
        match v {
            Some(v) if pstate == self.pstate && t == Table::Main => Ok(Some(self.read(key, v)?)),
            v => Ok(v),
        }
    }

    fn scan(
        &mut self,
        pstate: &str,
        t: Table,
        prefix: &[u8],
        range: &EncodedRange,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Value)>, AccessError> {
        let entries = self.inner.scan(pstate, t, prefix, range, reverse, limit)?;
        if pstate != self.pstate || t != Table::Main || self.record.is_none() {
            return Ok(entries);
        }
        let mut out = Vec::with_capacity(entries.len());
        for (suffix, v) in entries {
            let key = [prefix, &suffix].concat();
            let v = self.read(&key, v)?;
            out.push((suffix, v));
        }
        Ok(out)
    }

    fn migrating(&self) -> bool {
        self.record.is_some() || self.inner.migrating()
    }
}

impl<V: ViewMut + ?Sized> ViewMut for Migrating<'_, V> {
    fn put(&mut self, pstate: &str, t: Table, key: Vec<u8>, value: Option<Value>) {
        if pstate == self.pstate && t == Table::Main && self.past_cursor(&key) {
            // Written in the new shape past the cursor: the rewrite must skip it. (A mark on
            // a key that was already ahead rewrites the same mark.)
            self.inner.put(
                &ahead(pstate),
                Table::Main,
                key.clone(),
                Some(Value::Bool(true)),
            );
        }
        self.inner.put(pstate, t, key, value);
    }
}

/// The migration in force for `pstate` in this view, if its values may still be old here.
pub fn active<V: View + ?Sized>(
    view: &mut V,
    catalog: &Catalog,
    pstate: &str,
) -> Result<Option<Record>, AccessError> {
    if !catalog.migrating.contains(pstate) {
        return Ok(None);
    }
    // A record for another target is not this version's (an update that did not start).
    let to = catalog.schema(pstate)?.to_string();
    Ok(record_in(view, pstate)?.filter(|r| !r.done && r.to == to))
}

/// What one background step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stepped {
    /// Rewrote this many entries; more remain.
    Rewrote(u64),
    /// Rewrote this many and finished.
    Finished(u64),
    /// Nothing to do (no migration running, done, or stopped by an error).
    Idle,
}

/// One bounded step of the background rewrite of `pstate` on a partition (see the module
/// docs); the transaction is not made durable here (the partition's flush does it).
pub fn step(store: &PStateStore, catalog: &Catalog, pstate: &str) -> Result<Stepped, AccessError> {
    let snapshot = store.begin_read()?;
    let mut view = super::session::SnapshotView {
        store,
        snapshot: &snapshot,
    };
    let Some(mut r) = active(&mut view, catalog, pstate)? else {
        return Ok(Stepped::Idle);
    };
    if r.error.is_some() {
        return Ok(Stepped::Idle);
    }
    let range = EncodedRange {
        start: r.cursor.clone().map(|c| (c, true)),
        end: None,
    };
    let entries = store.scan(
        &snapshot,
        pstate,
        Table::Main,
        &[],
        &range,
        false,
        STEP_ENTRIES_MAX,
    )?;
    let finished = entries.len() < STEP_ENTRIES_MAX;
    let from = r.cursor.clone();
    let ahead_name = ahead(pstate);
    let mut overlay = Overlay::new();
    let mut rewrote = 0u64;
    let mut stalled = false;
    for (key, v) in &entries {
        if view.get(&ahead_name, Table::Main, key)?.is_some() {
            continue;
        }
        match migrate_value(catalog, pstate, key, v) {
            Ok(new) => {
                overlay.insert((pstate.to_string(), Table::Main, key.clone()), Some(new));
                rewrote += 1;
            }
            Err(e) if e.code == MIGRATION_UNAVAILABLE => {
                // Entries before this one done; the next step tries this one again.
                r.cursor = Some(key.clone());
                stalled = true;
                break;
            }
            Err(e) => {
                // Stop here, entries before this one done; reads of this one fail alike.
                r.cursor = Some(key.clone());
                r.error = Some(e.message);
                break;
            }
        }
    }
    // The marks the cursor passes mean nothing any more.
    let passed = EncodedRange {
        start: from.map(|c| (c, true)),
        end: match (r.error.is_some() || stalled, finished, entries.last()) {
            (true, _, _) => r.cursor.clone().map(|c| (c, false)),
            (false, false, Some((last, _))) => Some((last.clone(), true)),
            _ => None,
        },
    };
    for (k, _) in store.scan(
        &snapshot,
        &ahead_name,
        Table::Main,
        &[],
        &passed,
        false,
        usize::MAX,
    )? {
        overlay.insert((ahead_name.clone(), Table::Main, k), None);
    }
    if r.error.is_none() && !stalled {
        match (finished, entries.last()) {
            (false, Some((last, _))) => r.cursor = Some([last.as_slice(), &[0]].concat()),
            _ => r.done = true,
        }
    }
    r.rewritten += rewrote;
    overlay.insert(
        (RECORDS.to_string(), Table::Main, Record::key(pstate)),
        Some(r.encode()),
    );
    store.write(false, |txn| super::store::write_entries(txn, &overlay))?;
    Ok(match (r.done, r.error.is_some()) {
        (true, _) => Stepped::Finished(rewrote),
        (false, true) => Stepped::Idle,
        (false, false) => Stepped::Rewrote(rewrote),
    })
}

/// The module's migrator, in the catalog (a newtype so the catalog stays `Debug`).
#[derive(Clone)]
pub struct CatalogMigrator(pub Arc<dyn Migrator>);

impl std::fmt::Debug for CatalogMigrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Migrator")
    }
}

#[cfg(test)]
mod tests {
    //! A model test: random writes through sessions interleaved with background steps on a
    //! real store; after **every** transaction (each one a state a crash may leave) every key
    //! reads its model value, and every stored value is old exactly when the record says so.
    //! The migrator refuses a value already in the new shape, so a second application fails.

    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::pstate::path::{Navigator, TransformOp};
    use crate::pstate::schema::Schema;
    use crate::pstate::tests::Rng;
    use crate::pstate::Session;

    const P: &str = "p";
    const OLD: &str = "map<int, string>";
    const NEW: &str = "map<int, map<string, int>>";

    /// `"v<n>"` becomes `{"n": n}`; anything else is a second application.
    struct Fake(AtomicU64);

    impl Migrator for Fake {
        fn migrate(&self, _: &str, _key: &[u8], value: &[u8]) -> Result<Vec<u8>, MigrateError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            match from_cbor(value).unwrap() {
                Value::Text(s) => {
                    let n: i64 = s[1..].parse().unwrap();
                    Ok(to_cbor(&new(n)))
                }
                other => panic!("migrated twice: {other:?}"),
            }
        }
    }

    fn new(n: i64) -> Value {
        Value::Map(vec![(Value::Text("n".into()), Value::Integer(n.into()))])
    }

    fn k(n: i64) -> Value {
        Value::Integer(n.into())
    }

    fn check(
        store: &Arc<PStateStore>,
        catalog: &Arc<Catalog>,
        model: &BTreeMap<i64, i64>,
        at: &str,
    ) {
        let mut s = Session::new(Arc::clone(store), Arc::clone(catalog), 0, 1, 100_000);
        for key in 0..1_100 {
            let got = s.select(P, &[Navigator::Key(k(key))]).unwrap();
            let want: Vec<Value> = model.get(&key).map(|&n| new(n)).into_iter().collect();
            assert_eq!(got, want, "{at}: key {key}");
        }
        let r = record(store, P).unwrap().unwrap();
        let snapshot = store.begin_read().unwrap();
        let all = EncodedRange {
            start: None,
            end: None,
        };
        let raw = store
            .scan(&snapshot, P, Table::Main, &[], &all, false, usize::MAX)
            .unwrap();
        for (key, v) in raw {
            let ahead = store
                .get(&snapshot, &ahead(P), Table::Main, &key)
                .unwrap()
                .is_some();
            let old = !r.done && r.past_cursor(&key) && !ahead;
            assert_eq!(
                matches!(v, Value::Text(_)),
                old,
                "{at}: stored {v:?}, record {r:?}"
            );
        }
    }

    /// A store holding version 1's data (`"v<n>"` for n in 0..1000) with a migration begun.
    fn version_1_store() -> (tempfile::TempDir, Arc<PStateStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(PStateStore::open(&dir.path().join("pstate.redb")).unwrap());
        let mut overlay = Overlay::new();
        for n in 0..1_000i64 {
            let key = crate::pstate::key::encode(&k(n)).unwrap();
            let v = Some(Value::Text(format!("v{n}")));
            overlay.insert((P.into(), Table::Main, key), v);
        }
        let write =
            |txn: &redb::WriteTransaction| crate::pstate::store::write_entries(txn, &overlay);
        store.write(true, write).unwrap();
        begin(&store, P, OLD, NEW).unwrap();
        (dir, store)
    }

    /// The new version's catalog, migrating `P` with `migrator`.
    fn migrating_catalog(migrator: Arc<dyn Migrator>) -> Arc<Catalog> {
        let mut catalog = Catalog::default();
        catalog
            .schemas
            .insert(P.into(), Schema::parse(NEW).unwrap());
        catalog.migrating.insert(P.into());
        catalog.migrator = Some(CatalogMigrator(migrator));
        Arc::new(catalog)
    }

    #[test]
    fn every_commit_boundary_reads_the_model_and_nothing_migrates_twice() {
        for seed in 1..=4u64 {
            let (_dir, store) = version_1_store();
            let model: BTreeMap<i64, i64> = (0..1_000).map(|n| (n, n)).collect();
            let mut model = model;
            assert_eq!(record(&store, P).unwrap().unwrap().total, 1_000);
            let fake = Arc::new(Fake(AtomicU64::new(0)));
            let catalog = migrating_catalog(fake.clone());
            let mut rng = Rng(seed * 0x9e37_79b9);
            let mut steps = 0;
            let mut finished_at = None;
            for round in 0..40 {
                if rng.chance(50) {
                    let s = step(&store, &catalog, P).unwrap();
                    steps += 1;
                    if let Stepped::Finished(_) = s {
                        finished_at.get_or_insert(round);
                    }
                } else {
                    let mut s =
                        Session::new(Arc::clone(&store), Arc::clone(&catalog), 0, 1, 100_000);
                    for _ in 0..rng.below(30) {
                        let key = rng.below(1_100) as i64;
                        let path = [Navigator::Key(k(key))];
                        match rng.below(3) {
                            0 => {
                                let n = rng.below(1_000) as i64;
                                s.transform(P, &path, &TransformOp::Set(new(n))).unwrap();
                                model.insert(key, n);
                            }
                            1 if model.contains_key(&key) => {
                                let inner = [
                                    Navigator::Key(k(key)),
                                    Navigator::Key(Value::Text("n".into())),
                                ];
                                s.transform(P, &inner, &TransformOp::Increment(1)).unwrap();
                                *model.get_mut(&key).unwrap() += 1;
                            }
                            _ => {
                                s.transform(P, &path, &TransformOp::Remove).unwrap();
                                model.remove(&key);
                            }
                        }
                        s.end_record(true);
                    }
                    let writes = s.take_writes();
                    store
                        .write(false, |txn| {
                            crate::pstate::store::write_entries(txn, &writes)
                        })
                        .unwrap();
                }
                check(
                    &store,
                    &catalog,
                    &model,
                    &format!("seed {seed}, round {round}"),
                );
            }
            while !matches!(
                step(&store, &catalog, P).unwrap(),
                Stepped::Finished(_) | Stepped::Idle
            ) {
                steps += 1;
            }
            check(&store, &catalog, &model, &format!("seed {seed}, the end"));
            let r = record(&store, P).unwrap().unwrap();
            assert!(r.done && r.error.is_none(), "{r:?}");
            assert!(
                r.rewritten <= 1_000 && r.rewritten > 0,
                "{r:?} after {steps} steps"
            );
            // No marks are left once done.
            let snapshot = store.begin_read().unwrap();
            let all = EncodedRange {
                start: None,
                end: None,
            };
            let marks = store
                .scan(&snapshot, &ahead(P), Table::Main, &[], &all, false, 10)
                .unwrap();
            assert!(marks.is_empty(), "seed {seed}: {} marks left", marks.len());
        }
    }

    #[test]
    fn a_value_migrate_refuses_stops_the_rewrite_and_fails_its_reads_only() {
        struct Picky;
        impl Migrator for Picky {
            fn migrate(&self, _: &str, _: &[u8], value: &[u8]) -> Result<Vec<u8>, MigrateError> {
                match from_cbor(value).unwrap() {
                    Value::Text(s) if s == "v500" => {
                        Err(MigrateError::refused("`migrate` failed (bad): no"))
                    }
                    Value::Text(s) => Ok(to_cbor(&new(s[1..].parse().unwrap()))),
                    other => panic!("migrated twice: {other:?}"),
                }
            }
        }
        let (_dir, store) = version_1_store();
        let catalog = migrating_catalog(Arc::new(Picky));
        while let Stepped::Rewrote(_) = step(&store, &catalog, P).unwrap() {}
        let r = record(&store, P).unwrap().unwrap();
        assert!(
            !r.done && r.error.as_deref().unwrap().contains("no"),
            "{r:?}"
        );
        assert_eq!(r.rewritten, 500);
        let mut s = Session::new(Arc::clone(&store), catalog, 0, 1, 100_000);
        assert_eq!(
            s.select(P, &[Navigator::Key(k(499))]).unwrap(),
            vec![new(499)]
        );
        assert_eq!(
            s.select(P, &[Navigator::Key(k(501))]).unwrap(),
            vec![new(501)]
        );
        let e = s.select(P, &[Navigator::Key(k(500))]).unwrap_err();
        assert_eq!(e.code, "migration-failed");
    }

    #[test]
    fn a_transient_failure_only_delays_the_rewrite() {
        /// Cannot run on `v300` the first two times (as a deadline on a loaded host).
        struct Flaky(AtomicU64);
        impl Migrator for Flaky {
            fn migrate(&self, _: &str, _: &[u8], value: &[u8]) -> Result<Vec<u8>, MigrateError> {
                match from_cbor(value).unwrap() {
                    Value::Text(s) if s == "v300" && self.0.fetch_add(1, Ordering::Relaxed) < 2 => {
                        Err(MigrateError {
                            message: "deadline".into(),
                            transient: true,
                        })
                    }
                    Value::Text(s) => Ok(to_cbor(&new(s[1..].parse().unwrap()))),
                    other => panic!("migrated twice: {other:?}"),
                }
            }
        }
        let (_dir, store) = version_1_store();
        let catalog = migrating_catalog(Arc::new(Flaky(AtomicU64::new(0))));
        let mut steps = 0;
        while let Stepped::Rewrote(_) = step(&store, &catalog, P).unwrap() {
            steps += 1;
        }
        let r = record(&store, P).unwrap().unwrap();
        assert!(r.done && r.error.is_none(), "{r:?}");
        assert_eq!(r.rewritten, 1_000);
        // 1000 entries take 15 full steps and a last one; the stalls took more.
        assert!(steps > 15, "{steps} steps: {r:?}");
    }
}
