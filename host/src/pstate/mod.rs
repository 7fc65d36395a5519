//! PStates: partitioned, persistent, nested indexes.
//!
//! Owns schemas ([`schema`]), the order-preserving key encoding ([`key`]), paths ([`path`]),
//! the per-partition redb store ([`store`]) and the [`Session`] through which a guest handler
//! reads and writes its partition. Invariants: every stored value was validated against its
//! PState's schema; a top-level key is only ever written on the partition that owns it.

pub mod key;
pub mod path;
pub mod schema;
pub mod session;
pub mod store;

use std::collections::BTreeMap;

pub use path::{Navigator, TransformOp};
pub use schema::Schema;
pub use session::Session;
pub use store::PStateStore;

use crate::partition::partition_of;
use crate::value::Value;

/// The PStates of one module: name to schema.
#[derive(Debug, Default)]
pub struct Catalog {
    pub schemas: BTreeMap<String, Schema>,
}

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
        AccessError::new("storage", e.to_string())
    }
}

impl Catalog {
    pub fn schema(&self, pstate: &str) -> Result<&Schema, AccessError> {
        self.schemas.get(pstate).ok_or_else(|| {
            AccessError::new("unknown-pstate", format!("no PState named `{pstate}`"))
        })
    }
}

/// The top-level key of a path, encoded, after checking it against the key schema.
pub fn leading_key(
    schema: &Schema,
    pstate: &str,
    path: &[Navigator],
) -> Result<Vec<u8>, AccessError> {
    let first = path.first().ok_or(path::PathError::Empty)?;
    let Navigator::Key(k) = first;
    if let Some((key_schema, _)) = schema.as_top_level() {
        key_schema
            .validate(k, &format!("{pstate} key"))
            .map_err(|e| AccessError::new("schema-mismatch", e.to_string()))?;
    }
    key::encode(k).map_err(|e| AccessError::new("invalid-path", e.to_string()))
}

/// The partition that owns the top-level key `key` (a value) of any PState.
pub fn partition_of_key(key: &Value, partitions: u32) -> Result<u32, key::KeyError> {
    Ok(partition_of(&key::encode(key)?, partitions))
}

/// Selects `path` in the committed state of one partition (used by HTTP reads).
pub fn select_committed(
    store: &PStateStore,
    catalog: &Catalog,
    pstate: &str,
    path: &[Navigator],
) -> Result<Vec<Value>, AccessError> {
    let schema = catalog.schema(pstate)?;
    let key = leading_key(schema, pstate, path)?;
    let snapshot = store.begin_read()?;
    let entry = PStateStore::get(&snapshot, pstate, &key)?;
    Ok(path::select(entry.as_ref(), &path[1..], 1)?)
}
