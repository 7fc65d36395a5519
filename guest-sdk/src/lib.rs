//! # sluice-sdk: write Sluice modules in plain Rust
//!
//! A Sluice module declares **depots** (durable, partitioned logs of records), **PStates**
//! (partitioned, persistent indexes) and **stream topologies** (handlers run for each record
//! appended to the depots they read). This crate hides the WIT contract, the CBOR encoding and
//! the ABI: you write serde types and functions.
//!
//! ```no_run
//! use serde::Deserialize;
//! use sluice_sdk::{Ctx, Definition, Module, Partitioner, Path, Result, Schema};
//!
//! #[derive(Deserialize)]
//! struct Word {
//!     word: String,
//! }
//!
//! struct Wordcount;
//!
//! impl Module for Wordcount {
//!     fn define(m: &mut Definition) {
//!         m.depot("words", Partitioner::hash("word"));
//!         m.pstate("counts", Schema::map(Schema::string(), Schema::int()));
//!         m.stream_topology("wordcount").reads("words").handler(count);
//!     }
//! }
//!
//! fn count(ctx: &Ctx, record: Word) -> Result<()> {
//!     ctx.pstate("counts").increment(&Path::key(&record.word), 1)
//! }
//!
//! sluice_sdk::export_module!(Wordcount);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` and deploy the `.wasm`:
//! `curl -X PUT --data-binary @wordcount.wasm http://127.0.0.1:7470/v1/modules/wordcount`.
//!
//! A module can also declare **query topologies**, answered on demand
//! (`POST /v1/modules/{m}/queries/{name}` with JSON arguments) from every partition:
//!
//! ```no_run
//! # use sluice_sdk::{Definition, Path, QueryCtx, Result};
//! # fn declare(m: &mut Definition) {
//! m.query("total", total);
//! # }
//! #[derive(serde::Deserialize)]
//! struct NoArgs {}
//!
//! fn total(q: &QueryCtx, _: NoArgs) -> Result<i64> {
//!     // One list per partition, read in parallel by the host from one snapshot each.
//!     let per_partition = q.pstate("counts").select_all::<i64>(&Path::new().map_vals())?;
//!     Ok(per_partition.into_iter().flatten().sum())
//! }
//! ```
//!
//! Queries are read-only (a transform answers `read-only`) and bounded by the host's query
//! deadline. To test a module, use `sluice::testing::TestHost` from the host crate in ordinary
//! `cargo test` tests: it runs a real host in the test process (see the repository README,
//! "Testing a module", and `modules/*/tests/module.rs`).
//!
//! Handlers run on the partition that owns the record (a `hash` depot routes by the key's
//! stable hash, the same function that partitions PStates by their top-level key), so a
//! handler for key K reads and writes K's PState entries locally. Writing a key owned by
//! another partition is an error. A handler that returns an error, panics, loops past its
//! deadline or runs out of memory has its writes rolled back; after retries the record goes to
//! the topology's dead letters.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "module",
        pub_export_macro: true,
        export_macro_name: "__export_sluice_world",
        default_bindings_module: "::sluice_sdk::bindings",
    });
}

mod definition;
mod error;
mod partition;
mod pstate;

pub use definition::{Definition, Partitioner, Schema, StreamTopology};
pub use error::{Error, Result};
pub use partition::partition_of_key;
pub use pstate::{KeyRange, PState, Path};

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
}

impl Ctx {
    /// Continue this record's event tree with the hop handler `handler` of the current
    /// topology on the target partition(s), carrying `payload`. The hop is sent only if the
    /// current handler returns `Ok`, after its writes commit; a `full` ack waits for it.
    pub fn hop<K, P>(&self, target: HopTarget<'_, K>, handler: &str, payload: &P) -> Result<()>
    where
        K: serde::Serialize + ?Sized,
        P: serde::Serialize + ?Sized,
    {
        use bindings::sluice::module::host;
        host::hop(&wit_target(target)?, handler, &encode(payload)?)
            .map_err(|e| Error::new(e.code, e.message))
    }

    /// A handle on the PState `name` of the current partition.
    pub fn pstate(&self, name: &str) -> PState {
        PState::new(name)
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
    })
}

/// What a query gets besides its arguments: read access to every partition's PStates.
pub struct QueryCtx {
    partitions: u32,
}

impl QueryCtx {
    /// A read-only handle on the PState `name`, on any partition.
    pub fn pstate(&self, name: &str) -> PState {
        PState::new(name)
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
        let f = with_definition::<M, _>(|d| d.handler(&topology, &handler));
        let Some(f) = f else {
            return Err(wit::Error {
                code: "unknown-handler".into(),
                message: format!("topology `{topology}` has no handler `{handler}`"),
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
        $crate::bindings::__export_sluice_world!(__SluiceGuest);
    };
}
