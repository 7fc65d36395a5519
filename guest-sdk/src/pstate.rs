//! Typed access to the current partition's PStates.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::bindings::sluice::module::host;
use crate::bindings::sluice::module::types::{Navigator, TransformOp};
use crate::{decode, encode, Error, Result};

/// A path into a PState: `Path::key("alice").key("balance")`.
#[derive(Debug, Clone, Default)]
pub struct Path {
    navigators: Vec<Navigator>,
    error: Option<Error>,
}

impl Path {
    /// A path starting at the top-level key `k` (which picks the partition).
    pub fn key<K: Serialize + ?Sized>(k: &K) -> Path {
        Path::default().then_key(k)
    }

    /// Continue into the map value under key `k`.
    pub fn then_key<K: Serialize + ?Sized>(mut self, k: &K) -> Path {
        match encode(k) {
            Ok(bytes) => self.navigators.push(Navigator::Key(bytes)),
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

/// A PState of the current partition.
pub struct PState {
    name: String,
}

impl PState {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
        }
    }

    /// Every value the path selects.
    pub fn select<T: DeserializeOwned>(&self, path: &Path) -> Result<Vec<T>> {
        let values = host::select(&self.name, &path.navigators()?).map_err(from_wit)?;
        values
            .iter()
            .map(|v| decode(v, "a selected value"))
            .collect()
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

    /// Removes the value at `path`.
    pub fn remove(&self, path: &Path) -> Result<()> {
        host::transform(&self.name, &path.navigators()?, &TransformOp::Remove).map_err(from_wit)
    }
}
