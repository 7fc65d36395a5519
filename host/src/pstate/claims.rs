//! Which topology kind writes each PState: stream topologies, or one microbatch topology.
//!
//! A microbatch applies whole values computed from its batch's snapshot, so a stream write
//! (or another microbatch topology's batch) to the same entry between its run and its apply
//! would be overwritten: 1,600 increments from both kinds left 1,533. Rama has each PState
//! owned by one topology; Sluice decides at run time, since the contract does not declare
//! which PStates a topology writes: the first write to a PState *claims* it — for stream
//! topologies (any number of them: their writes compose, one partition applies them in
//! order) or for one microbatch topology — and a write by any other writer is refused with
//! `pstate-writer-conflict`, naming the PState and its writer. Invariant: a claim is durable
//! (table `pstate-writers` in the claiming partition's store, fsynced) before the first write
//! it allows, and every partition of the module sees every claim (one map per module, loaded
//! from all partitions at start).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use redb::{ReadableTable, TableDefinition};

use super::{AccessError, PStateStore};

const WRITERS: TableDefinition<&str, &str> = TableDefinition::new("pstate-writers");

/// Who may write a PState.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writer {
    /// Every stream topology of the module.
    Stream,
    /// This one microbatch topology.
    Microbatch(String),
}

impl Writer {
    fn encode(&self) -> String {
        match self {
            Writer::Stream => "stream".into(),
            Writer::Microbatch(t) => format!("microbatch:{t}"),
        }
    }

    fn decode(s: &str) -> Option<Self> {
        match s.split_once(':') {
            None if s == "stream" => Some(Writer::Stream),
            Some(("microbatch", t)) => Some(Writer::Microbatch(t.to_string())),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Writer::Stream => "stream topologies".into(),
            Writer::Microbatch(t) => format!("microbatch topology `{t}`"),
        }
    }
}

/// A module's claims (shared by its partitions).
#[derive(Debug, Default)]
pub struct WriterClaims {
    claims: Mutex<BTreeMap<String, Writer>>,
}

impl WriterClaims {
    /// The claims recorded in any of the module's partition stores.
    pub fn load(stores: &[Arc<PStateStore>]) -> Result<Arc<Self>, redb::Error> {
        let mut claims = BTreeMap::new();
        for store in stores {
            let txn = store.begin_read()?;
            let table = match txn.open_table(WRITERS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            for item in table.iter()? {
                let (k, v) = item?;
                if let Some(w) = Writer::decode(v.value()) {
                    claims.entry(k.value().to_string()).or_insert(w);
                }
            }
        }
        Ok(Arc::new(Self {
            claims: Mutex::new(claims),
        }))
    }

    /// Who claimed `pstate`, if anyone has.
    pub fn writer(&self, pstate: &str) -> Option<Writer> {
        self.claims.lock().expect("poisoned").get(pstate).cloned()
    }

    /// Lets `writer` write `pstate`, claiming it (durably, in `store`) if nobody has.
    pub fn check(
        &self,
        store: &PStateStore,
        pstate: &str,
        writer: &Writer,
    ) -> Result<(), AccessError> {
        let mut claims = self.claims.lock().expect("poisoned");
        match claims.get(pstate) {
            Some(w) if w == writer => Ok(()),
            Some(w) => Err(AccessError::new(
                "pstate-writer-conflict",
                format!(
                    "PState `{pstate}` is written by {}; {} may not write it too (a microbatch applies values computed from its batch's snapshot, which would overwrite other writes): give each its own PState",
                    w.describe(),
                    writer.describe()
                ),
            )),
            None => {
                store.write(true, |txn| {
                    txn.open_table(WRITERS)?
                        .insert(pstate, writer.encode().as_str())?;
                    Ok(())
                })?;
                claims.insert(pstate.to_string(), writer.clone());
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_writer_claims_and_others_are_refused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let stores: Vec<Arc<PStateStore>> = (0..2)
            .map(|p| Arc::new(PStateStore::open(&dir.path().join(format!("{p}.redb"))).unwrap()))
            .collect();
        let claims = WriterClaims::load(&stores).unwrap();
        let mb = Writer::Microbatch("bank".into());
        claims.check(&stores[1], "balances", &mb).unwrap();
        claims.check(&stores[0], "counts", &Writer::Stream).unwrap();
        claims.check(&stores[0], "counts", &Writer::Stream).unwrap();
        let e = claims
            .check(&stores[0], "balances", &Writer::Stream)
            .unwrap_err();
        assert_eq!(e.code, "pstate-writer-conflict");
        assert!(e
            .message
            .contains("`balances` is written by microbatch topology `bank`"));
        let reloaded = WriterClaims::load(&stores).unwrap();
        let other = Writer::Microbatch("other".into());
        assert!(reloaded.check(&stores[0], "balances", &other).is_err());
        assert!(reloaded.check(&stores[1], "counts", &other).is_err());
        reloaded.check(&stores[1], "balances", &mb).unwrap();
    }
}
