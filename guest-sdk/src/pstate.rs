//! Typed access to the current partition's PStates.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::bindings::sluice::module::host;
use crate::bindings::sluice::module::types::{
    Comparison, KeyRange as KeyRangeWit, Navigator, TransformOp,
};
use crate::{decode, encode, Error, Result};

/// Bounds of [`Path::sorted_range`]. Build with [`KeyRange::all`] and the setters.
#[derive(Debug, Clone, Default)]
pub struct KeyRange {
    start: Option<(Vec<u8>, bool)>,
    end: Option<(Vec<u8>, bool)>,
    limit: Option<u64>,
    reverse: bool,
    error: Option<Error>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> Self {
        Self::default()
    }
    /// From `k` (inclusive).
    pub fn from<K: Serialize + ?Sized>(mut self, k: &K) -> Self {
        self.start = self.encode(k).map(|b| (b, true));
        self
    }
    /// After `k` (exclusive).
    pub fn after<K: Serialize + ?Sized>(mut self, k: &K) -> Self {
        self.start = self.encode(k).map(|b| (b, false));
        self
    }
    /// Up to `k` (exclusive).
    pub fn to<K: Serialize + ?Sized>(mut self, k: &K) -> Self {
        self.end = self.encode(k).map(|b| (b, false));
        self
    }
    /// Up to and including `k`.
    pub fn through<K: Serialize + ?Sized>(mut self, k: &K) -> Self {
        self.end = self.encode(k).map(|b| (b, true));
        self
    }
    /// At most `n` entries.
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }
    /// Highest keys first.
    pub fn reverse(mut self) -> Self {
        self.reverse = true;
        self
    }
    fn encode<K: Serialize + ?Sized>(&mut self, k: &K) -> Option<Vec<u8>> {
        match encode(k) {
            Ok(b) => Some(b),
            Err(e) => {
                self.error.get_or_insert(e);
                None
            }
        }
    }
}

/// A path into a PState: `Path::key("alice").then_key("balance")`. Every navigator of the
/// host is here; see the README for what each selects.
#[derive(Debug, Clone, Default)]
pub struct Path {
    navigators: Vec<Navigator>,
    error: Option<Error>,
}

impl Path {
    /// The empty path: a partition's whole top-level map (continue with `all`, `map_keys`, …).
    pub fn new() -> Path {
        Path::default()
    }

    /// A path starting at the top-level key `k` (which picks the partition).
    pub fn key<K: Serialize + ?Sized>(k: &K) -> Path {
        Path::default().then_key(k)
    }

    fn push_value<K: Serialize + ?Sized>(mut self, k: &K, f: fn(Vec<u8>) -> Navigator) -> Path {
        match encode(k) {
            Ok(bytes) => self.navigators.push(f(bytes)),
            Err(e) => self.error = self.error.or(Some(e)),
        }
        self
    }

    fn push(mut self, n: Navigator) -> Path {
        self.navigators.push(n);
        self
    }

    /// The map value under key `k`.
    pub fn then_key<K: Serialize + ?Sized>(self, k: &K) -> Path {
        self.push_value(k, Navigator::Key)
    }
    /// Like `then_key`, but transforms never create the key.
    pub fn must<K: Serialize + ?Sized>(self, k: &K) -> Path {
        self.push_value(k, Navigator::Must)
    }
    /// Every element (list, set) or `[key, value]` entry (map).
    pub fn all(self) -> Path {
        self.push(Navigator::All)
    }
    pub fn map_keys(self) -> Path {
        self.push(Navigator::MapKeys)
    }
    pub fn map_vals(self) -> Path {
        self.push(Navigator::MapVals)
    }
    pub fn first(self) -> Path {
        self.push(Navigator::First)
    }
    pub fn last(self) -> Path {
        self.push(Navigator::Last)
    }
    pub fn nth(self, i: u64) -> Path {
        self.push(Navigator::Nth(i))
    }
    /// The number of elements (0 when absent).
    pub fn count(self) -> Path {
        self.push(Navigator::Count)
    }
    /// The entries within a key range (a map; for a set, a list of elements).
    pub fn sorted_range(mut self, r: KeyRange) -> Path {
        if let Some(e) = r.error {
            self.error.get_or_insert(e);
            return self;
        }
        let (start, start_inclusive) = r.start.map_or((None, true), |(b, i)| (Some(b), i));
        let (end, end_inclusive) = r.end.map_or((None, false), |(b, i)| (Some(b), i));
        self.push(Navigator::SortedRange(KeyRangeWit {
            start,
            end,
            start_inclusive,
            end_inclusive,
            limit: r.limit,
            reverse: r.reverse,
        }))
    }
    /// The value, or `v` when absent or null.
    pub fn null_to_val<V: Serialize + ?Sized>(self, v: &V) -> Path {
        self.push_value(v, Navigator::NullToVal)
    }
    /// Continue only where the value equals `v`.
    pub fn filter_eq<V: Serialize + ?Sized>(self, v: &V) -> Path {
        self.filter(Comparison::Eq, v)
    }
    /// Continue only where the value is less than `v` (key order).
    pub fn filter_lt<V: Serialize + ?Sized>(self, v: &V) -> Path {
        self.filter(Comparison::Lt, v)
    }
    /// Continue only where the value is greater than `v` (key order).
    pub fn filter_gt<V: Serialize + ?Sized>(self, v: &V) -> Path {
        self.filter(Comparison::Gt, v)
    }
    fn filter<V: Serialize + ?Sized>(mut self, c: Comparison, v: &V) -> Path {
        match encode(v) {
            Ok(b) => self.navigators.push(Navigator::Filter((c, b))),
            Err(e) => self.error = self.error.or(Some(e)),
        }
        self
    }

    fn navigators(&self) -> Result<Vec<Navigator>> {
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(self.navigators.clone()),
        }
    }
}

fn from_wit(e: crate::bindings::sluice::module::types::Error) -> Error {
    Error::new(e.code, e.message)
}

/// A PState: in a topology handler, its entries on the current partition (read and write); in a
/// query, on any partition (read only: `select` goes to the partition owning the path's leading
/// key, `select_from`/`select_all`/`select_partition` to the ones named).
pub struct PState {
    name: String,
}

impl PState {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Every value the path selects.
    pub fn select<T: DeserializeOwned>(&self, path: &Path) -> Result<Vec<T>> {
        let values = host::select(&self.name, &path.navigators()?).map_err(from_wit)?;
        values
            .iter()
            .map(|v| decode(v, "a selected value"))
            .collect()
    }

    /// In a query: every value the path selects on each partition `target` names, one list per
    /// partition in partition order (the host reads them in parallel). In a topology handler
    /// only the current partition can be read.
    pub fn select_from<T: DeserializeOwned, K: Serialize + ?Sized>(
        &self,
        target: crate::HopTarget<'_, K>,
        path: &Path,
    ) -> Result<Vec<Vec<T>>> {
        let target = crate::wit_target(target)?;
        let lists =
            host::select_from(&self.name, &target, &path.navigators()?).map_err(from_wit)?;
        lists
            .iter()
            .map(|vs| vs.iter().map(|v| decode(v, "a selected value")).collect())
            .collect()
    }

    /// In a query: what the path selects on every partition, one list per partition.
    pub fn select_all<T: DeserializeOwned>(&self, path: &Path) -> Result<Vec<Vec<T>>> {
        self.select_from(crate::HopTarget::<()>::All, path)
    }

    /// In a query: what the path selects on partition `p`.
    pub fn select_partition<T: DeserializeOwned>(&self, p: u32, path: &Path) -> Result<Vec<T>> {
        Ok(self
            .select_from(crate::HopTarget::<()>::Partition(p), path)?
            .into_iter()
            .next()
            .unwrap_or_default())
    }

    /// The one value at `path`, if present.
    pub fn get<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<T>> {
        Ok(self.select(path)?.into_iter().next())
    }

    /// Sets the value at `path`, creating intermediate maps.
    pub fn set<V: Serialize + ?Sized>(&self, path: &Path, value: &V) -> Result<()> {
        let op = TransformOp::Set(encode(value)?);
        host::transform(&self.name, &path.navigators()?, &op).map_err(from_wit)
    }

    /// Adds `by` to the integer at `path` (absent counts as 0).
    pub fn increment(&self, path: &Path, by: i64) -> Result<()> {
        host::transform(&self.name, &path.navigators()?, &TransformOp::Increment(by))
            .map_err(from_wit)
    }

    /// Adds `element` to the set at `path`.
    pub fn insert<V: Serialize + ?Sized>(&self, path: &Path, element: &V) -> Result<()> {
        host::transform(
            &self.name,
            &path.navigators()?,
            &TransformOp::Insert(encode(element)?),
        )
        .map_err(from_wit)
    }

    /// Appends `element` to the list at `path`.
    pub fn push<V: Serialize + ?Sized>(&self, path: &Path, element: &V) -> Result<()> {
        host::transform(
            &self.name,
            &path.navigators()?,
            &TransformOp::Push(encode(element)?),
        )
        .map_err(from_wit)
    }

    /// Sets every entry of `entries` (a map) in the map at `path`.
    pub fn merge<V: Serialize + ?Sized>(&self, path: &Path, entries: &V) -> Result<()> {
        host::transform(
            &self.name,
            &path.navigators()?,
            &TransformOp::Merge(encode(entries)?),
        )
        .map_err(from_wit)
    }

    /// The number of elements of the collection at `path` (O(1) when subindexed).
    pub fn count(&self, path: &Path) -> Result<u64> {
        Ok(self.get(&path.clone().count())?.unwrap_or(0))
    }

    /// Removes the value at `path`.
    pub fn remove(&self, path: &Path) -> Result<()> {
        host::transform(&self.name, &path.navigators()?, &TransformOp::Remove).map_err(from_wit)
    }
}
