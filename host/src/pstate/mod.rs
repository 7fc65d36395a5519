//! PStates: partitioned, persistent, nested indexes.
//!
//! Owns schemas ([`schema`]), the order-preserving key encoding ([`key`]), paths ([`path`]),
//! the per-partition redb store ([`store`]) and the [`Session`] through which a guest handler
//! reads and writes its partition. Invariants: every stored value was validated against its
//! PState's schema; a top-level key is only ever written on the partition that owns it.

pub mod claims;
pub mod engine;
pub mod key;
pub mod migration;
pub mod path;
pub mod schema;
pub mod session;
pub mod store;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeMap;

pub use path::{Cmp, Navigator, Range, TransformOp};
pub use schema::Schema;
pub use session::Session;
pub use store::PStateStore;

use crate::partition::partition_of;
use crate::value::Value;

/// The PStates of one module: name to schema.
#[derive(Debug, Default)]
pub struct Catalog {
    pub schemas: BTreeMap<String, Schema>,
    /// The global PStates: stored whole on `module::GLOBAL_PARTITION`.
    pub globals: std::collections::BTreeSet<String>,
    /// The PStates this version declares a migration for ([`migration`]).
    pub migrating: std::collections::BTreeSet<String>,
    /// Runs the module's `migrate` (set when the module starts).
    pub migrator: Option<migration::CatalogMigrator>,
}

/// The partition a global PState lives on: the first, so it exists for every partition
/// count and never moves whatever count is chosen at deploy.
pub const GLOBAL_PARTITION: u32 = 0;

/// A PState access refused, with a stable code returned to the guest or HTTP client.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{message}")]
pub struct AccessError {
    pub code: &'static str,
    pub message: String,
}

impl AccessError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<path::PathError> for AccessError {
    fn from(e: path::PathError) -> Self {
        AccessError::new("invalid-path", e.to_string())
    }
}

impl From<redb::Error> for AccessError {
    fn from(e: redb::Error) -> Self {
        let code = match e {
            redb::Error::Corrupted(_) => "damaged",
            _ => "storage",
        };
        AccessError::new(code, e.to_string())
    }
}

impl Catalog {
    pub fn schema(&self, pstate: &str) -> Result<&Schema, AccessError> {
        self.schemas.get(pstate).ok_or_else(|| {
            AccessError::new("unknown-pstate", format!("no PState named `{pstate}`"))
        })
    }

    pub fn is_global(&self, pstate: &str) -> bool {
        self.globals.contains(pstate)
    }

    /// The partition holding `path` of `pstate`: [`GLOBAL_PARTITION`] for a global PState,
    /// else the owner of the path's leading key (`None` when it has none).
    pub fn home_partition(
        &self,
        pstate: &str,
        path: &[Navigator],
        partitions: u32,
    ) -> Result<Option<u32>, AccessError> {
        if self.is_global(pstate) {
            return Ok(Some(GLOBAL_PARTITION));
        }
        leading_partition(path, partitions)
    }
}

/// Checks a leading `key`/`must` navigator's key against the PState's key schema.
pub fn check_leading_key(
    schema: &Schema,
    pstate: &str,
    path: &[Navigator],
) -> Result<(), AccessError> {
    if let (Some(Navigator::Key(k) | Navigator::Must(k)), Some((key_schema, _))) =
        (path.first(), schema.as_top_level())
    {
        key_schema
            .normalize(k.clone(), &format!("{pstate} key"))
            .map_err(|e| AccessError::new("schema-mismatch", e.to_string()))?;
    }
    Ok(())
}

/// The partition owning the path's leading key, if it starts with `key`/`must`.
pub fn leading_partition(path: &[Navigator], partitions: u32) -> Result<Option<u32>, AccessError> {
    match path.first() {
        Some(Navigator::Key(k) | Navigator::Must(k)) => {
            Ok(Some(partition_of_key(k, partitions).map_err(|e| {
                AccessError::new("invalid-path", e.to_string())
            })?))
        }
        _ => Ok(None),
    }
}

/// The partition that owns the top-level key `key` (a value) of any PState.
pub fn partition_of_key(key: &Value, partitions: u32) -> Result<u32, key::KeyError> {
    Ok(partition_of(&key::encode(key)?, partitions))
}

/// Selects `path` in the committed state of one partition (used by HTTP reads), returning at
/// most `limit` values.
pub fn select_committed(
    store: &PStateStore,
    catalog: &Catalog,
    pstate: &str,
    path: &[Navigator],
    limit: usize,
) -> Result<Vec<Value>, AccessError> {
    let snapshot = store.begin_read()?;
    select_in(store, catalog, pstate, path, &snapshot, limit)
}

/// Selects `path` in one snapshot of a partition's store (a subscription's feed evaluates
/// each commit's snapshot).
pub fn select_in(
    store: &PStateStore,
    catalog: &Catalog,
    pstate: &str,
    path: &[Navigator],
    snapshot: &redb::ReadTransaction,
    limit: usize,
) -> Result<Vec<Value>, AccessError> {
    let schema = catalog.schema(pstate)?;
    check_leading_key(schema, pstate, path)?;
    let mut view = session::SnapshotView { store, snapshot };
    select_with(&mut view, catalog, pstate, limit, path)
}

/// Selects `path` of `pstate` in a view, old entries of a migration in force read migrated.
pub fn select_with<V: engine::View>(
    view: &mut V,
    catalog: &Catalog,
    pstate: &str,
    limit: usize,
    path: &[Navigator],
) -> Result<Vec<Value>, AccessError> {
    let schema = catalog.schema(pstate)?;
    let record = migration::active(view, catalog, pstate)?;
    let mut view = migration::Migrating {
        inner: view,
        catalog,
        pstate,
        record,
    };
    engine::Engine {
        view: &mut view,
        pstate,
        schema,
        limit,
    }
    .select(path)
}

/// Transforms `path` of `pstate` in a view (see [`select_with`]; writes to old entries are
/// marked migrated).
pub fn transform_with<V: engine::ViewMut>(
    view: &mut V,
    catalog: &Catalog,
    pstate: &str,
    limit: usize,
    path: &[Navigator],
    op: &TransformOp,
) -> Result<(), AccessError> {
    let schema = catalog.schema(pstate)?;
    let record = migration::active(view, catalog, pstate)?;
    let mut view = migration::Migrating {
        inner: view,
        catalog,
        pstate,
        record,
    };
    engine::Engine {
        view: &mut view,
        pstate,
        schema,
        limit,
    }
    .transform(path, op)
}
