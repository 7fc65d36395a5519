//! # sluice-sdk: write Sluice modules in plain Rust
//!
//! A Sluice module declares **depots** (durable, partitioned logs of records), **PStates**
//! (partitioned, persistent indexes) and **stream topologies** (handlers run for each record
//! appended to the depots they read). This crate hides the WIT contract, the CBOR encoding and
//! the ABI: you write serde types and functions.
//!
//! The recommended way is **typed**: every depot, PState and hop handler is a `const` that
//! names it once, with the Rust types it holds. Schemas are derived from the types, each depot
//! has its own record handler, and a misspelt name, a payload of the wrong type or a write from
//! a query is a compile error rather than a dead letter:
//!
//! ```no_run
//! use serde::Deserialize;
//! use sluice_sdk::{
//!     AckReturn, Ctx, Definition, Depot, Hop, HopTarget, Module, PStateDef, Partitioner, Path,
//!     QueryCtx, Result,
//! };
//!
//! #[derive(Deserialize)]
//! struct Word {
//!     word: String,
//! }
//!
//! #[derive(Deserialize)]
//! struct Sentence {
//!     text: String,
//! }
//!
//! const WORDS: Depot<Word> = Depot::new("words");
//! const SENTENCES: Depot<Sentence> = Depot::new("sentences");
//! // Declared as `map<string, int>`: the schema comes from the types.
//! const COUNTS: PStateDef<String, i64> = PStateDef::new("counts");
//! const COUNT_WORD: Hop<String> = Hop::new("count-word");
//!
//! struct Wordcount;
//!
//! impl Module for Wordcount {
//!     fn define(m: &mut Definition) {
//!         m.depot(WORDS, Partitioner::hash("word"));
//!         m.depot(SENTENCES, Partitioner::Random);
//!         m.pstate_of(COUNTS);
//!         m.stream_topology("wordcount").on(WORDS, count);
//!         m.stream_topology("sentences")
//!             .on(SENTENCES, split)
//!             .hop_handler(COUNT_WORD, count_word);
//!         m.query("total", total);
//!     }
//! }
//!
//! /// Runs on the partition owning `w.word`: its count is local.
//! fn count(ctx: &Ctx, w: Word) -> Result<AckReturn<i64>> {
//!     let counts = ctx.pstate(COUNTS);
//!     counts.increment(&w.word, 1)?;
//!     Ok(AckReturn(counts.get(&w.word)?.unwrap_or(0)))
//! }
//!
//! /// A sentence lands anywhere; each word hops to the partition owning it.
//! fn split(ctx: &Ctx, s: Sentence) -> Result<()> {
//!     for word in s.text.split_whitespace() {
//!         let word = word.to_lowercase();
//!         ctx.hop(HopTarget::Key(&word), COUNT_WORD, &word)?;
//!     }
//!     Ok(())
//! }
//!
//! fn count_word(ctx: &Ctx, word: String) -> Result<()> {
//!     ctx.pstate(COUNTS).increment(&word, 1)
//! }
//!
//! #[derive(Deserialize)]
//! struct NoArgs {}
//!
//! /// A query reads every partition (in parallel, one snapshot each); it cannot write.
//! fn total(q: &QueryCtx, _: NoArgs) -> Result<i64> {
//!     let per_partition = q.pstate(COUNTS).select_all::<i64>(&Path::new().map_vals())?;
//!     Ok(per_partition.into_iter().flatten().sum())
//! }
//!
//! sluice_sdk::export_module!(Wordcount);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` and deploy the `.wasm`:
//! `curl -X PUT --data-binary @wordcount.wasm http://127.0.0.1:7470/v1/modules/wordcount`.
//!
//! ## Declarations
//!
//! - [`Depot<R>`]: records decode into `R`. [`Definition::depot`] declares it with its
//!   [`Partitioner`]; [`StreamTopology::on`]`(DEPOT, f)` subscribes a topology with a handler
//!   `f(&Ctx, R)` for that depot alone, so a topology reading two depots has two handlers (the
//!   host still calls one record handler; the SDK dispatches on the record's depot).
//! - [`PStateDef<K, V>`]: [`Definition::pstate_of`] declares the schema `map<K, V>` from
//!   [`HasSchema`]. Derive it for your records with `#[derive(Schema)]` (the derive of crate
//!   `sluice-sdk-macros`, re-exported here beside the [`Schema`](struct@Schema) type as serde's
//!   derives sit beside its traits): fields become `{field: T, ...}` under serde's names
//!   (`rename`, `rename_all`), an `Option<T>` field is an optional field (it must be skipped when
//!   `None`: the schema language has no null), a unit enum is a `string`, and what a schema
//!   cannot describe (`flatten`, data-carrying enums) is a compile error. Mark big collections
//!   [`Subindexed`] (or `#[sluice(subindexed)]` on a field), unchecked values [`Any`] (or
//!   `#[sluice(any)]`), byte strings [`Bytes`].
//! - [`Hop<P>`]: [`StreamTopology::hop_handler`]`(HOP, f)` with `f(&Ctx, P)`, and
//!   [`Ctx::hop`]`(target, HOP, &p)` with a `&P`.
//!
//! ```
//! use std::collections::BTreeMap;
//! use sluice_sdk::{HasSchema, PStateDef, Schema, Subindexed};
//!
//! #[derive(serde::Serialize, serde::Deserialize, Schema)]
//! #[serde(rename_all = "camelCase")]
//! struct Account {
//!     balance: i64,
//!     #[serde(default, skip_serializing_if = "Option::is_none")]
//!     display_name: Option<String>,
//!     history: Subindexed<Vec<sluice_sdk::Any>>,
//! }
//!
//! assert_eq!(
//!     Account::schema().as_str(),
//!     "{balance: int, displayName: string, history: subindexed list<any>}"
//! );
//! // Declared by `m.pstate_of(LEDGERS)` as `map<string, subindexed map<list<any>, int>>`
//! // (a tuple is a `list<any>`: the schema language has no tuples).
//! const LEDGERS: PStateDef<String, Subindexed<BTreeMap<(i64, String), i64>>> =
//!     PStateDef::new("ledgers");
//! ```
//!
//! ## Handles
//!
//! [`Ctx::pstate`]`(DEF)` in a handler opens a [`HandlerPState<K, V>`]: reads and writes on the
//! current partition — `get`, `exists`, `set`, `merge`, `remove`, and by value type `increment`
//! (integers), `insert`/`contains`/`remove_element` (sets), `push` (lists),
//! `get_entry`/`set_entry`/`has_entry`/`remove_entry` (maps), `count`, `range` and `keep_last`
//! (collections). [`QueryCtx::pstate`]`(DEF)` in a query opens a [`QueryPState<K, V>`]: the same
//! reads, on the partition owning each key, plus `select_from`/`select_all` over partitions, and
//! no writes. Deeper paths go through [`PStateHandle::path`] and the `*_at` methods (see
//! [`Path`]). [`group_by_partition`] groups keys by the partition owning them, for a fan-out of
//! one hop per partition.
//!
//! ## The untyped API
//!
//! Everything can also be named by strings — `m.pstate("counts", Schema::map(...))`,
//! `.reads("words").handler(f)`, `ctx.pstate("counts")` (a [`PState`] over [`Path`]s),
//! `ctx.hop(target, "count-word", &payload)` — which is what the typed API sends. It stays for
//! modules written before it and for what the types cannot say (one handler over depots of
//! different record shapes, say), but names and payloads are then only checked at run time.
//!
//! ## Queries, testing, partitions
//!
//! Query topologies ([`Definition::query`]) are answered on demand
//! (`POST /v1/modules/{m}/queries/{name}` with JSON arguments), read-only and bounded by the
//! host's query deadline. To test a module, use `sluice::testing::TestHost` from the host crate
//! in ordinary `cargo test` tests: it runs a real host in the test process (see the repository
//! README, "Testing a module", and `modules/*/tests/module.rs`).
//!
//! Handlers run on the partition that owns the record (a `hash` depot routes by the key's
//! stable hash, the same function that partitions PStates by their top-level key), so a
//! handler for key K reads and writes K's PState entries locally. Writing a key owned by
//! another partition is an error. A handler that returns an error, panics, loops past its
//! deadline or runs out of memory has its writes rolled back; after retries the record goes to
//! the topology's dead letters.

// The derive names `::sluice_sdk`; this lets the crate's own tests use it.
extern crate self as sluice_sdk;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "module-ext",
        pub_export_macro: true,
        export_macro_name: "__export_sluice_world",
        default_bindings_module: "::sluice_sdk::bindings",
    });
}

mod definition;
mod error;
mod partition;
mod pstate;
mod schema;
mod typed;

pub use definition::{Definition, Partitioner, Retention, StreamTopology, Tick, GLOBAL_PARTITION};
pub use error::{Error, Result};
pub use partition::{group_by_partition, partition_of_key};
pub use pstate::{KeyRange, PState, Path};
pub use schema::{
    Any, Bytes, Collection, HasSchema, Integer, ListLike, MapLike, Schema, SetLike, Sorted,
    Subindexed,
};
/// `#[derive(Schema)]`: implements [`HasSchema`] from a struct's fields (see the crate docs).
pub use sluice_sdk_macros::Schema;
pub use typed::{
    access, Depot, HandlerPState, Hop, HopName, PStateDef, PStateHandle, PStateName, QueryPState,
};

use std::cell::RefCell;

use bindings::sluice::module::types as wit;

/// Implemented by a module's root type; see the crate docs.
pub trait Module {
    /// Declares the module's depots, PStates and topologies.
    fn define(m: &mut Definition);
}

/// A handler's return value: `()` or an [`AckReturn`] that reaches the appender.
pub trait HandlerOutput {
    #[doc(hidden)]
    fn into_ack(self) -> Result<Option<Vec<u8>>>;
}

impl HandlerOutput for () {
    fn into_ack(self) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

/// A value returned to the client whose append waited for `full` ack (under `results`).
pub struct AckReturn<T>(pub T);

impl<T: serde::Serialize> HandlerOutput for AckReturn<T> {
    fn into_ack(self) -> Result<Option<Vec<u8>>> {
        Ok(Some(encode(&self.0)?))
    }
}

/// Where the record being handled came from.
#[derive(Debug, Clone)]
pub struct RecordInfo {
    pub depot: String,
    pub partition: u32,
    pub offset: u64,
    pub partitions: u32,
    /// The microbatch being processed (stable across retries); `None` in stream topologies.
    pub batch_id: Option<u64>,
}

/// What a handler gets besides its record: access to its partition's PStates.
pub struct Ctx {
    record: RecordInfo,
}

/// Where [`Ctx::hop`] continues, or which partitions [`PState::select_from`] reads in a query.
pub enum HopTarget<'a, K: serde::Serialize + ?Sized> {
    /// The partition owning this key (where its PState entries live).
    Key(&'a K),
    /// Every partition.
    All,
    /// This partition index.
    Partition(u32),
    /// The partition holding the module's global PStates ([`GLOBAL_PARTITION`]).
    Global,
}

impl<'a> HopTarget<'a, ()> {
    /// [`HopTarget::Partition`] without naming a key type.
    pub const fn partition(p: u32) -> Self {
        HopTarget::Partition(p)
    }
    /// [`HopTarget::All`] without naming a key type.
    pub const fn all() -> Self {
        HopTarget::All
    }
    /// [`HopTarget::Global`] without naming a key type.
    pub const fn global() -> Self {
        HopTarget::Global
    }
}

impl Ctx {
    /// Continue this record's event tree with the hop handler `handler` of the current
    /// topology on the target partition(s), carrying `payload`. `handler` is a [`Hop<P>`]
    /// (so `payload` must be a `&P`) or, untyped, a `&str`. The hop is sent only if the
    /// current handler returns `Ok`, after its writes commit; a `full` ack waits for it.
    pub fn hop<K, H, P>(&self, target: HopTarget<'_, K>, handler: H, payload: &P) -> Result<()>
    where
        K: serde::Serialize + ?Sized,
        H: HopName<P>,
        P: serde::Serialize + ?Sized,
    {
        use bindings::sluice::module::host;
        host::hop(&wit_target(target)?, handler.hop_name(), &encode(payload)?)
            .map_err(|e| Error::new(e.code, e.message))
    }

    /// A handle on a PState of the current partition: for a [`PStateDef`], a typed
    /// [`HandlerPState`]; for a name, an untyped [`PState`].
    pub fn pstate<N: PStateName>(&self, pstate: N) -> N::Handler {
        pstate.handler_handle()
    }

    /// The record's depot, partition and offset.
    pub fn record(&self) -> &RecordInfo {
        &self.record
    }
}

pub(crate) fn wit_target<K: serde::Serialize + ?Sized>(t: HopTarget<'_, K>) -> Result<wit::Target> {
    Ok(match t {
        HopTarget::Key(k) => wit::Target::Key(encode(k)?),
        HopTarget::All => wit::Target::All,
        HopTarget::Partition(p) => wit::Target::Partition(p),
        HopTarget::Global => wit::Target::Partition(GLOBAL_PARTITION),
    })
}

/// What a query gets besides its arguments: read access to every partition's PStates.
pub struct QueryCtx {
    partitions: u32,
}

impl QueryCtx {
    /// A read-only handle on a PState, on any partition: for a [`PStateDef`], a typed
    /// [`QueryPState`] (which has no write methods); for a name, an untyped [`PState`] (whose
    /// writes the host refuses with `read-only`).
    pub fn pstate<N: PStateName>(&self, pstate: N) -> N::Query {
        pstate.query_handle()
    }

    /// The module's partition count.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }
}

/// Logging into the host's log, tagged with the module's name.
pub mod log {
    use super::bindings::sluice::module::host;
    use super::wit::LogLevel;

    pub fn debug(message: &str) {
        host::log(LogLevel::Debug, message);
    }
    pub fn info(message: &str) {
        host::log(LogLevel::Info, message);
    }
    pub fn warn(message: &str) {
        host::log(LogLevel::Warn, message);
    }
    pub fn error(message: &str) {
        host::log(LogLevel::Error, message);
    }
}

pub(crate) fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out)
        .map_err(|e| Error::new("encode", format!("cannot encode value: {e}")))?;
    Ok(out)
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    ciborium::de::from_reader(bytes)
        .map_err(|e| Error::new("decode", format!("cannot decode {what}: {e}")))
}

thread_local! {
    static DEFINITION: RefCell<Option<Definition>> = const { RefCell::new(None) };
}

#[doc(hidden)]
pub mod __private {
    use super::*;
    use crate::bindings::exports::sluice::module::extensions as ext;

    fn with_definition<M: Module, R>(f: impl FnOnce(&Definition) -> R) -> R {
        DEFINITION.with(|d| {
            let mut d = d.borrow_mut();
            let def = d.get_or_insert_with(|| {
                let mut def = Definition::default();
                M::define(&mut def);
                def
            });
            f(def)
        })
    }

    pub fn query<M: Module>(
        name: String,
        args: Vec<u8>,
        partitions: u32,
    ) -> core::result::Result<Vec<u8>, wit::Error> {
        let f = with_definition::<M, _>(|d| d.query_fn(&name));
        let Some(f) = f else {
            return Err(wit::Error {
                code: "unknown-query".into(),
                message: format!("no query named `{name}`"),
            });
        };
        f(&QueryCtx { partitions }, &args).map_err(|e| wit::Error {
            code: e.code,
            message: e.message,
        })
    }

    pub fn define<M: Module>() -> wit::ModuleDefinition {
        with_definition::<M, _>(|d| d.to_wit())
    }

    pub fn define_extensions<M: Module>() -> ext::ExtensionsDef {
        with_definition::<M, _>(|d| d.extensions_to_wit())
    }

    pub fn migrate<M: Module>(
        pstate: String,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> core::result::Result<Vec<u8>, wit::Error> {
        let Some(f) = with_definition::<M, _>(|d| d.migration(&pstate)) else {
            return Err(wit::Error {
                code: "no-migration".into(),
                message: format!("PState `{pstate}` declares no migration"),
            });
        };
        f(&key, &value).map_err(|e| wit::Error {
            code: e.code,
            message: e.message,
        })
    }

    pub fn handle<M: Module>(
        topology: String,
        handler: String,
        input: Vec<u8>,
        ctx: wit::RecordCtx,
    ) -> core::result::Result<Option<Vec<u8>>, wit::Error> {
        let ctx = Ctx {
            record: RecordInfo {
                depot: ctx.depot,
                partition: ctx.partition,
                offset: ctx.offset,
                partitions: ctx.partitions,
                batch_id: ctx.batch_id,
            },
        };
        let f = with_definition::<M, _>(|d| d.handler(&topology, &handler, &ctx.record.depot));
        let Some(f) = f else {
            return Err(wit::Error {
                code: "unknown-handler".into(),
                message: if handler == definition::RECORD_HANDLER {
                    format!(
                        "topology `{topology}` has no handler for records of depot `{}`",
                        ctx.record.depot
                    )
                } else {
                    format!("topology `{topology}` has no handler `{handler}`")
                },
            });
        };
        f(&ctx, &input).map_err(|e| wit::Error {
            code: e.code,
            message: e.message,
        })
    }
}

/// Exports a [`Module`] implementation as the component's `sluice:module/guest` interface.
#[macro_export]
macro_rules! export_module {
    ($module:ty) => {
        struct __SluiceGuest;
        impl $crate::bindings::exports::sluice::module::guest::Guest for __SluiceGuest {
            fn define() -> $crate::bindings::sluice::module::types::ModuleDefinition {
                $crate::__private::define::<$module>()
            }
            fn handle(
                topology: ::std::string::String,
                handler: ::std::string::String,
                input: ::std::vec::Vec<u8>,
                ctx: $crate::bindings::sluice::module::types::RecordCtx,
            ) -> ::core::result::Result<
                ::core::option::Option<::std::vec::Vec<u8>>,
                $crate::bindings::sluice::module::types::Error,
            > {
                $crate::__private::handle::<$module>(topology, handler, input, ctx)
            }
            fn query(
                name: ::std::string::String,
                args: ::std::vec::Vec<u8>,
                partitions: u32,
            ) -> ::core::result::Result<
                ::std::vec::Vec<u8>,
                $crate::bindings::sluice::module::types::Error,
            > {
                $crate::__private::query::<$module>(name, args, partitions)
            }
        }
        impl $crate::bindings::exports::sluice::module::extensions::Guest for __SluiceGuest {
            fn define_extensions(
            ) -> $crate::bindings::exports::sluice::module::extensions::ExtensionsDef {
                $crate::__private::define_extensions::<$module>()
            }
            fn migrate(
                pstate: ::std::string::String,
                key: ::std::vec::Vec<u8>,
                value: ::std::vec::Vec<u8>,
            ) -> ::core::result::Result<
                ::std::vec::Vec<u8>,
                $crate::bindings::sluice::module::types::Error,
            > {
                $crate::__private::migrate::<$module>(pstate, key, value)
            }
        }
        $crate::bindings::__export_sluice_world!(__SluiceGuest);
    };
}
