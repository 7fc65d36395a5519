//! The module's `migrate`, run for PState migrations (`pstate::migration`) in instances of
//! its own: a read that meets an old value calls it from inside another guest call (a
//! handler's or a query's), which cannot re-enter its own instance.
//!
//! Invariant: a migrator instance has no session, so `migrate` can read or write nothing —
//! the same stored value always migrates to the same new one.

use std::sync::{Arc, Mutex};

use crate::imports::Imports;
use crate::pstate::migration::{MigrateError, Migrator};
use crate::runtime::{GuestInstance, Pre, Runtime};

/// Idle instances kept for the next call (readers call concurrently from the read pool).
const IDLE_MAX: usize = 8;

/// See the module docs.
pub struct GuestMigrator {
    runtime: Arc<Runtime>,
    pre: Pre,
    module: String,
    idle: Mutex<Vec<GuestInstance>>,
}

impl GuestMigrator {
    pub fn new(runtime: Arc<Runtime>, pre: Pre, module: &str) -> Self {
        Self {
            runtime,
            pre,
            module: module.to_string(),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn instance(&self) -> Result<GuestInstance, String> {
        if let Some(i) = self.idle.lock().expect("poisoned").pop() {
            return Ok(i);
        }
        let imports = Imports::new(&self.module, self.runtime.limits().path_navigators_max);
        GuestInstance::new(
            Arc::clone(&self.runtime),
            self.pre.clone(),
            &self.module,
            Box::new(imports),
        )
        .map_err(|e| format!("cannot start an instance for `migrate`: {e}"))
    }

    fn put_back(&self, i: GuestInstance) {
        let mut idle = self.idle.lock().expect("poisoned");
        if idle.len() < IDLE_MAX {
            idle.push(i);
        }
    }
}

impl Migrator for GuestMigrator {
    fn migrate(&self, pstate: &str, key: &[u8], value: &[u8]) -> Result<Vec<u8>, MigrateError> {
        let mut i = self.instance().map_err(|message| MigrateError {
            message,
            transient: true,
        })?;
        match i.migrate(pstate, key, value) {
            Ok(answer) => {
                self.put_back(i);
                answer.map_err(|(code, message)| {
                    MigrateError::refused(format!("`migrate` failed ({code}): {message}"))
                })
            }
            // This instance is gone with it. A deadline may be the host's load, not the value.
            Err(e) => Err(MigrateError {
                transient: e.code == "deadline-exceeded",
                message: format!("`migrate` failed: {e}"),
            }),
        }
    }
}
