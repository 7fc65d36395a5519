//! Typed declarations — [`PStateDef`], [`Depot`], [`Hop`] — and the typed PState handles they
//! open: [`HandlerPState`] in a topology handler, [`QueryPState`] in a query.
//!
//! A declaration is a `const` naming the thing once, with the Rust types of what it holds; every
//! use goes through the constant, so a name cannot drift between its declaration and its uses,
//! and a value of the wrong type does not compile. Invariants: a handle's methods send exactly
//! the navigators and ops the untyped [`PState`] would for the same path; the query handle has
//! no method that writes and the handler handle none that reads other partitions, so the
//! host's `read-only` and `partition-not-local` refusals cannot be reached through them.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Serialize;

use crate::schema::{Collection, HasSchema, Integer, ListLike, MapLike, SetLike, Sorted};
use crate::{HopTarget, KeyRange, PState, Path, Result};

/// A PState named once, keyed by `K` (the top-level key, which picks the partition) with
/// values `V`. Declare it with [`Definition::pstate_of`] (schema `map<K, V>`, derived from the
/// types) and open it with [`Ctx::pstate`] or [`QueryCtx::pstate`]:
///
/// ```
/// # use sluice_sdk::PStateDef;
/// const COUNTS: PStateDef<String, i64> = PStateDef::new("counts");
/// ```
///
/// [`Definition::pstate_of`]: crate::Definition::pstate_of
/// [`Ctx::pstate`]: crate::Ctx::pstate
/// [`QueryCtx::pstate`]: crate::QueryCtx::pstate
pub struct PStateDef<K, V> {
    name: &'static str,
    types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> PStateDef<K, V> {
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            types: PhantomData,
        }
    }
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

/// A depot named once, whose records decode into `R`. Declare it with [`Definition::depot`]
/// and give it a handler per topology with [`StreamTopology::on`].
///
/// [`Definition::depot`]: crate::Definition::depot
/// [`StreamTopology::on`]: crate::StreamTopology::on
pub struct Depot<R> {
    name: &'static str,
    types: PhantomData<fn() -> R>,
}

impl<R> Depot<R> {
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            types: PhantomData,
        }
    }
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<R> AsRef<str> for Depot<R> {
    fn as_ref(&self) -> &str {
        self.name
    }
}

/// A hop handler named once, carrying payloads of type `P`. Declare it with
/// [`StreamTopology::hop_handler`] and send to it with [`Ctx::hop`]; both check `P`.
///
/// [`StreamTopology::hop_handler`]: crate::StreamTopology::hop_handler
/// [`Ctx::hop`]: crate::Ctx::hop
pub struct Hop<P> {
    name: &'static str,
    types: PhantomData<fn(P)>,
}

impl<P> Hop<P> {
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            types: PhantomData,
        }
    }
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

macro_rules! copy_debug {
    ($($t:ident<$($p:ident),*>),*) => {
        $(impl<$($p),*> Clone for $t<$($p),*> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<$($p),*> Copy for $t<$($p),*> {}
        impl<$($p),*> fmt::Debug for $t<$($p),*> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($t), "({:?})"), self.name)
            }
        })*
    };
}

copy_debug!(PStateDef<K, V>, Depot<R>, Hop<P>);

/// A hop handler's name, carrying payloads of type `P`: a [`Hop<P>`] (checked), or a `&str`
/// (any payload; the untyped API).
#[diagnostic::on_unimplemented(
    message = "this hop handler does not carry a `{P}` payload",
    label = "`{Self}` carries another payload type",
    note = "a `Hop<T>` is declared with a handler taking a `T` and sent a `&T`"
)]
pub trait HopName<P: ?Sized> {
    #[doc(hidden)]
    fn hop_name(&self) -> &str;
}

impl<P: ?Sized> HopName<P> for &str {
    fn hop_name(&self) -> &str {
        self
    }
}

impl<P: ?Sized> HopName<P> for &String {
    fn hop_name(&self) -> &str {
        self
    }
}

impl<P> HopName<P> for Hop<P> {
    fn hop_name(&self) -> &str {
        self.name
    }
}

/// What [`Ctx::pstate`] and [`QueryCtx::pstate`] open: a [`PStateDef`] (a typed handle), or a
/// PState's name (the untyped [`PState`]).
///
/// [`Ctx::pstate`]: crate::Ctx::pstate
/// [`QueryCtx::pstate`]: crate::QueryCtx::pstate
pub trait PStateName {
    /// The handle in a topology handler.
    type Handler;
    /// The handle in a query.
    type Query;
    #[doc(hidden)]
    fn handler_handle(self) -> Self::Handler;
    #[doc(hidden)]
    fn query_handle(self) -> Self::Query;
}

impl PStateName for &str {
    type Handler = PState;
    type Query = PState;
    fn handler_handle(self) -> PState {
        PState::new(self)
    }
    fn query_handle(self) -> PState {
        PState::new(self)
    }
}

impl PStateName for &String {
    type Handler = PState;
    type Query = PState;
    fn handler_handle(self) -> PState {
        PState::new(self)
    }
    fn query_handle(self) -> PState {
        PState::new(self)
    }
}

impl<K, V> PStateName for PStateDef<K, V> {
    type Handler = HandlerPState<K, V>;
    type Query = QueryPState<K, V>;
    fn handler_handle(self) -> HandlerPState<K, V> {
        PStateHandle::new(self.name)
    }
    fn query_handle(self) -> QueryPState<K, V> {
        PStateHandle::new(self.name)
    }
}

/// Where a [`PStateHandle`] was opened, which decides its methods.
pub mod access {
    /// In a topology handler: the current partition, read and write.
    #[derive(Debug)]
    pub enum Handler {}
    /// In a query: any partition, read only.
    #[derive(Debug)]
    pub enum Query {}
}

/// A typed handle on a [`PStateDef<K, V>`]: use it as [`HandlerPState`] or [`QueryPState`].
///
/// Keys are passed by reference to any borrowed form of `K` (a `&str` for a `String` key).
/// The typed methods cover the top-level value and one level into a collection value; for
/// anything deeper, [`path`](Self::path) starts a [`Path`] at a key and the `*_at` methods
/// take it.
pub struct PStateHandle<K, V, A> {
    raw: PState,
    types: PhantomData<fn() -> (K, V)>,
    access: PhantomData<A>,
}

/// A PState in a topology handler: its entries on the current partition, read and write.
pub type HandlerPState<K, V> = PStateHandle<K, V, access::Handler>;
/// A PState in a query: read only, on any partition ([`get`](PStateHandle::get) and the
/// other key reads go to the partition owning the key).
pub type QueryPState<K, V> = PStateHandle<K, V, access::Query>;

impl<K, V, A> fmt::Debug for PStateHandle<K, V, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PStateHandle({:?})", self.raw.name())
    }
}

fn found(values: Vec<IgnoredAny>) -> bool {
    !values.is_empty()
}

/// Reads, in handlers and queries alike.
impl<K, V, A> PStateHandle<K, V, A> {
    fn new(name: &str) -> Self {
        Self {
            raw: PState::new(name),
            types: PhantomData,
            access: PhantomData,
        }
    }

    /// A path starting at the top-level key `key`, for the `*_at` methods.
    pub fn path<Q>(&self, key: &Q) -> Path
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        Path::key(key)
    }

    /// The value under `key`, if present.
    pub fn get<Q>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        V: DeserializeOwned,
    {
        self.raw.get(&Path::key(key))
    }

    /// Whether `key` has a value. Reads no more than a count when the value is a collection or
    /// a record holding a subindexed one (the whole value otherwise).
    pub fn exists<Q>(&self, key: &Q) -> Result<bool>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        V: HasSchema,
    {
        let path = Path::new().must(key);
        let path = match V::SUBINDEXED_FIELD {
            _ if V::COLLECTION => path.count(),
            Some(field) => path.then_key(field).count(),
            None => path,
        };
        self.raw.select(&path).map(found)
    }

    /// The number of elements of the collection under `key` (0 when absent; O(1) when
    /// subindexed).
    pub fn count<Q>(&self, key: &Q) -> Result<u64>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        V: Collection,
    {
        self.raw.count(&Path::key(key))
    }

    /// The elements (set) or `(key, value)` entries (map) of the collection under `key` within
    /// `range`, in key order (or reversed): one seek when subindexed.
    pub fn range<Q>(&self, key: &Q, range: KeyRange) -> Result<Vec<V::Item>>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        V: Sorted,
    {
        self.raw.select(&Path::key(key).sorted_range(range).all())
    }

    /// The entry `entry` of the map under `key`.
    pub fn get_entry<Q, E>(&self, key: &Q, entry: &E) -> Result<Option<V::Value>>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        V: MapLike,
        V::Key: Borrow<E>,
        E: Serialize + ?Sized,
    {
        self.raw.get(&Path::key(key).then_key(entry))
    }

    /// Whether the map under `key` has the entry `entry`.
    pub fn has_entry<Q, E>(&self, key: &Q, entry: &E) -> Result<bool>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        V: MapLike,
        V::Key: Borrow<E>,
        E: Serialize + ?Sized,
    {
        self.raw.select(&Path::key(key).must(entry)).map(found)
    }

    /// Whether the set under `key` holds `element`.
    pub fn contains<Q, E>(&self, key: &Q, element: &E) -> Result<bool>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        V: SetLike,
        V::Element: Borrow<E>,
        E: Serialize + ?Sized,
    {
        self.raw.select(&only(key, element).all()).map(found)
    }

    /// Every value `path` selects (in a query, on the partition owning its leading key).
    pub fn select<T: DeserializeOwned>(&self, path: &Path) -> Result<Vec<T>> {
        self.raw.select(path)
    }

    /// The one value at `path`, if present.
    pub fn get_at<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<T>> {
        self.raw.get(path)
    }

    /// The number of elements of the collection at `path` (O(1) when subindexed).
    pub fn count_at(&self, path: &Path) -> Result<u64> {
        self.raw.count(path)
    }
}

/// The one element `element` of the collection under `key`, as a range.
fn only<Q: Serialize + ?Sized, E: Serialize + ?Sized>(key: &Q, element: &E) -> Path {
    Path::key(key).sorted_range(KeyRange::all().from(element).through(element))
}

/// Writes, only in topology handlers (on the current partition).
impl<K, V> PStateHandle<K, V, access::Handler> {
    /// Sets the value under `key`.
    pub fn set<Q>(&self, key: &Q, value: &V) -> Result<()>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        V: Serialize,
    {
        self.raw.set(&Path::key(key), value)
    }

    /// Sets the fields (record) or entries (map) present in `part` in the value under `key`,
    /// keeping the others: a record with its `None` fields skipped updates only the others.
    pub fn merge<Q>(&self, key: &Q, part: &V) -> Result<()>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        V: Serialize,
    {
        self.raw.merge(&Path::key(key), part)
    }

    /// Removes the value under `key`.
    pub fn remove<Q>(&self, key: &Q) -> Result<()>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.raw.remove(&Path::key(key))
    }

    /// Adds `by` to the integer under `key` (absent counts as 0).
    pub fn increment<Q>(&self, key: &Q, by: i64) -> Result<()>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        V: Integer,
    {
        self.raw.increment(&Path::key(key), by)
    }

    /// Adds `element` to the set under `key`.
    pub fn insert<Q, E>(&self, key: &Q, element: &E) -> Result<()>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        V: SetLike,
        V::Element: Borrow<E>,
        E: Serialize + ?Sized,
    {
        self.raw.insert(&Path::key(key), element)
    }

    /// Removes `element` from the set under `key` (if there).
    pub fn remove_element<Q, E>(&self, key: &Q, element: &E) -> Result<()>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        V: SetLike,
        V::Element: Borrow<E>,
        E: Serialize + ?Sized,
    {
        self.raw.remove(&only(key, element))
    }

    /// Appends `element` to the list under `key`.
    pub fn push<Q, E>(&self, key: &Q, element: &E) -> Result<()>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        V: ListLike,
        V::Element: Borrow<E>,
        E: Serialize + ?Sized,
    {
        self.raw.push(&Path::key(key), element)
    }

    /// Sets the entry `entry` of the map under `key` to `value`.
    pub fn set_entry<Q, E>(&self, key: &Q, entry: &E, value: &V::Value) -> Result<()>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        V: MapLike,
        V::Key: Borrow<E>,
        E: Serialize + ?Sized,
    {
        self.raw.set(&Path::key(key).then_key(entry), value)
    }

    /// Removes the entry `entry` of the map under `key` (if there).
    pub fn remove_entry<Q, E>(&self, key: &Q, entry: &E) -> Result<()>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        V: MapLike,
        V::Key: Borrow<E>,
        E: Serialize + ?Sized,
    {
        self.raw.remove(&Path::key(key).then_key(entry))
    }

    /// Trims the map or set under `key` to its last `n` elements in key order — the newest
    /// `n` when keys start with a time — and returns how many it removed.
    pub fn keep_last<Q>(&self, key: &Q, n: u64) -> Result<u64>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
        V: Sorted,
    {
        let at = Path::key(key);
        let len = self.raw.count(&at)?;
        if len <= n {
            return Ok(0);
        }
        let oldest = KeyRange::all().limit(len - n);
        self.raw.remove(&at.sorted_range(oldest))?;
        Ok(len - n)
    }

    /// Sets the value at `path`, creating intermediate maps.
    pub fn set_at<T: Serialize + ?Sized>(&self, path: &Path, value: &T) -> Result<()> {
        self.raw.set(path, value)
    }

    /// Adds `by` to the integer at `path` (absent counts as 0).
    pub fn increment_at(&self, path: &Path, by: i64) -> Result<()> {
        self.raw.increment(path, by)
    }

    /// Adds `element` to the set at `path`.
    pub fn insert_at<T: Serialize + ?Sized>(&self, path: &Path, element: &T) -> Result<()> {
        self.raw.insert(path, element)
    }

    /// Appends `element` to the list at `path`.
    pub fn push_at<T: Serialize + ?Sized>(&self, path: &Path, element: &T) -> Result<()> {
        self.raw.push(path, element)
    }

    /// Sets every entry of `entries` (a map or record) in the map at `path`.
    pub fn merge_at<T: Serialize + ?Sized>(&self, path: &Path, entries: &T) -> Result<()> {
        self.raw.merge(path, entries)
    }

    /// Removes what `path` selects.
    pub fn remove_at(&self, path: &Path) -> Result<()> {
        self.raw.remove(path)
    }
}

/// Reads of other partitions, only in queries.
impl<K, V> PStateHandle<K, V, access::Query> {
    /// What `path` selects on each partition `target` names, one list per partition in
    /// partition order (the host reads them in parallel, each from one snapshot).
    pub fn select_from<T, TK>(&self, target: HopTarget<'_, TK>, path: &Path) -> Result<Vec<Vec<T>>>
    where
        T: DeserializeOwned,
        TK: Serialize + ?Sized,
    {
        self.raw.select_from(target, path)
    }

    /// What `path` selects on every partition, one list per partition.
    pub fn select_all<T: DeserializeOwned>(&self, path: &Path) -> Result<Vec<Vec<T>>> {
        self.raw.select_all(path)
    }

    /// What `path` selects on partition `p`.
    pub fn select_partition<T: DeserializeOwned>(&self, p: u32, path: &Path) -> Result<Vec<T>> {
        self.raw.select_partition(p, path)
    }
}
