//! The cluster's module catalog: every module deployed on the cluster, its component and its
//! partition count, in one replicated log (JetStream stream `SL_MODULES`, CLUSTER.md §4.1).
//!
//! A deploy through any host appends the component in parts (one message each, at most
//! [`PART_BYTES`]), the last part being the module's new *head*; a delete appends a head
//! marked deleted. Every host reads the log in order into its index; the host that owns a
//! module (see [`super::placement`]) fetches the component from the parts its head names.
//! Invariants:
//! - a deploy's parts are contiguous and stored whole or not at all as far as readers go:
//!   they are published pipelined, each expecting the sequence before it, so no other
//!   deploy interleaves, and a reader takes a head only with all its parts;
//! - versions count up by one per module: a deploy expects the log's last sequence to be the
//!   one its index read, so of two deploys from the same read one is refused and re-reads;
//! - a component is checked against the SHA-256 its head names before it runs;
//! - a module deployed again after a delete is a new *incarnation* ([`Head::since`]: the
//!   version that created it), with partition logs of its own: nothing of the deleted one
//!   comes back, and a host still running the deleted one tells it apart by its version;
//! - the index lock is never held across I/O (see [`ModuleCatalog::refresh`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::log::{EntryKind, LogError, Outgoing, PublishFailure, ReplicatedLog, Stored};

/// The largest part of a component in one message (JetStream's default max_payload is 1 MiB).
pub const PART_BYTES: usize = 768 * 1024;

/// Attempts of a deploy whose expected sequence another deploy took.
const PUBLISH_ATTEMPTS: usize = 5;

/// What every part says about its deploy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Header {
    module: String,
    version: u64,
    part: u32,
    parts: u32,
    partitions: u32,
    deleted: bool,
    sha256: String,
    /// Placed per partition (see [`Head::spread`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    spread: bool,
}

/// A module as the catalog last says it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Head {
    pub module: String,
    pub version: u64,
    pub partitions: u32,
    pub deleted: bool,
    /// The version that created this incarnation of the module: its first deploy, or the
    /// first deploy after a delete. Versions below it belong to an older, deleted
    /// incarnation; its partition logs are named by it (`jetstream::stream_name`). Derived
    /// by every reader from the log's order, never stored.
    pub since: u64,
    /// Of the component.
    pub sha256: String,
    /// Placed per partition (deployed with `placement=partitions`): each partition has an
    /// owner of its own, so one module spreads over the hosts; else every partition runs on
    /// one host. Set by the first deploy of an incarnation; updates keep it.
    pub spread: bool,
    /// Log sequences of the component's parts, in order.
    #[serde(skip)]
    pub parts: Vec<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("module `{0}` is already deployed on the cluster")]
    Exists(String),
    #[error("module `{0}` was deployed, updated or deleted meanwhile; check the build against the new version and retry")]
    Changed(String),
    #[error("the module catalog is damaged at sequence {seq}: {reason}")]
    Damaged { seq: u64, reason: String },
    #[error("the module catalog kept changing under the deploy of `{0}`; retry")]
    Contended(String),
}

#[derive(Default)]
struct Index {
    /// The last sequence read.
    read_to: u64,
    heads: BTreeMap<String, Head>,
    /// Parts of a deploy read so far (its header, their sequences).
    partial: Option<(Header, Vec<u64>)>,
}

/// The module catalog over a replicated log.
pub struct ModuleCatalog<R: ?Sized> {
    log: Arc<R>,
    index: Mutex<Index>,
}

fn frame(header: &Header, chunk: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).expect("serializable");
    let mut out = Vec::with_capacity(4 + h.len() + chunk.len());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(chunk);
    out
}

fn unframe(stored: &Stored) -> Result<(Header, &[u8]), CatalogError> {
    let damaged = |reason: String| CatalogError::Damaged {
        seq: stored.seq,
        reason,
    };
    let p = &stored.payload;
    let n = p
        .get(..4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or_else(|| damaged("no header length".into()))?;
    let h = p
        .get(4..4 + n)
        .ok_or_else(|| damaged("a short header".into()))?;
    let header = serde_json::from_slice(h).map_err(|e| damaged(format!("header: {e}")))?;
    Ok((header, &p[4 + n..]))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl<R: ReplicatedLog + ?Sized> ModuleCatalog<R> {
    pub fn new(log: Arc<R>) -> Self {
        Self {
            log,
            index: Mutex::new(Index::default()),
        }
    }

    /// Reads what was appended since the last read into the index. The index is never
    /// locked across a read of the log: async request handlers consult it, and the NATS
    /// client needs their threads to answer the read.
    pub fn refresh(&self) -> Result<(), CatalogError> {
        loop {
            let from = self.index.lock().expect("poisoned").read_to + 1;
            let batch = self.log.read(from, 64)?;
            if batch.is_empty() {
                return Ok(());
            }
            let mut index = self.index.lock().expect("poisoned");
            for stored in &batch {
                // A concurrent refresh may have taken it already.
                if stored.seq == index.read_to + 1 {
                    let (header, _) = unframe(stored)?;
                    index.take(header, stored.seq);
                    index.read_to = stored.seq;
                }
            }
        }
    }

    /// Every module the index holds (deleted ones included: their head says so).
    pub fn heads(&self) -> Vec<Head> {
        let index = self.index.lock().expect("poisoned");
        index.heads.values().cloned().collect()
    }

    pub fn head(&self, module: &str) -> Option<Head> {
        let index = self.index.lock().expect("poisoned");
        index.heads.get(module).cloned()
    }

    /// Stores a new module's component; answers its head.
    pub fn deploy(&self, module: &str, partitions: u32, wasm: &[u8]) -> Result<Head, CatalogError> {
        self.deploy_placed(module, partitions, false, wasm)
    }

    /// Stores a new module's component, placed per partition if `spread`; answers its head.
    pub fn deploy_placed(
        &self,
        module: &str,
        partitions: u32,
        spread: bool,
        wasm: &[u8],
    ) -> Result<Head, CatalogError> {
        self.append(module, |previous| match previous {
            Some(h) if !h.deleted => Err(CatalogError::Exists(module.to_string())),
            _ => Ok((partitions, spread, false, wasm)),
        })
    }

    /// Stores a new build of a deployed module as its next version, if its head is still
    /// version `based_on` (the version the build was checked against): else
    /// [`CatalogError::Changed`], nothing stored. Answers the new head.
    pub fn update(&self, module: &str, based_on: u64, wasm: &[u8]) -> Result<Head, CatalogError> {
        self.append(module, |previous| match previous {
            Some(h) if !h.deleted && h.version == based_on => {
                Ok((h.partitions, h.spread, false, wasm))
            }
            _ => Err(CatalogError::Changed(module.to_string())),
        })
    }

    /// Marks a module deleted; false if the catalog has no such module.
    pub fn delete(&self, module: &str) -> Result<bool, CatalogError> {
        let gone = self.append(module, |previous| match previous {
            Some(h) if !h.deleted => Ok((h.partitions, h.spread, true, &[][..])),
            _ => Err(CatalogError::Exists(String::new())),
        });
        match gone {
            Ok(_) => Ok(true),
            Err(CatalogError::Exists(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Appends the next version of `module` as `decide` says from its current head,
    /// re-reading and deciding again when another deploy got there first.
    fn append<'w>(
        &self,
        module: &str,
        decide: impl Fn(Option<&Head>) -> Result<(u32, bool, bool, &'w [u8]), CatalogError>,
    ) -> Result<Head, CatalogError> {
        for _ in 0..PUBLISH_ATTEMPTS {
            self.refresh()?;
            let (expected, previous) = {
                let index = self.index.lock().expect("poisoned");
                (index.read_to, index.heads.get(module).cloned())
            };
            let (partitions, spread, deleted, wasm) = decide(previous.as_ref())?;
            let version = previous.map_or(1, |h| h.version + 1);
            let chunks: Vec<&[u8]> = if wasm.is_empty() {
                vec![wasm]
            } else {
                wasm.chunks(PART_BYTES).collect()
            };
            let sha256 = sha256_hex(wasm);
            let parts: Vec<Outgoing> = chunks
                .iter()
                .enumerate()
                .map(|(i, chunk)| Outgoing {
                    kind: EntryKind::In,
                    msg_id: format!("{module}.v{version}.{i}"),
                    payload: frame(
                        &Header {
                            module: module.to_string(),
                            version,
                            part: i as u32,
                            parts: chunks.len() as u32,
                            partitions,
                            deleted,
                            sha256: sha256.clone(),
                            spread,
                        },
                        chunk,
                    ),
                })
                .collect();
            match self.log.publish(expected, &parts) {
                Ok(()) => {
                    self.refresh()?;
                    return self
                        .head(module)
                        .filter(|h| h.version == version)
                        .ok_or_else(|| CatalogError::Contended(module.to_string()));
                }
                Err(PublishFailure {
                    error: LogError::WrongLastSequence { .. },
                    ..
                }) => continue,
                Err(f) => return Err(f.error.into()),
            }
        }
        Err(CatalogError::Contended(module.to_string()))
    }

    /// The component a head names, checked against its digest.
    pub fn wasm(&self, head: &Head) -> Result<Vec<u8>, CatalogError> {
        let mut wasm = Vec::new();
        for &seq in &head.parts {
            let stored = self
                .log
                .read(seq, 1)?
                .into_iter()
                .next()
                .filter(|s| s.seq == seq)
                .ok_or_else(|| CatalogError::Damaged {
                    seq,
                    reason: "a part of the component is missing".into(),
                })?;
            wasm.extend_from_slice(unframe(&stored)?.1);
        }
        if sha256_hex(&wasm) != head.sha256 {
            return Err(CatalogError::Damaged {
                seq: head.parts.last().copied().unwrap_or(0),
                reason: format!("module `{}` does not match its digest", head.module),
            });
        }
        Ok(wasm)
    }
}

impl Index {
    /// Takes one part read at `seq`.
    fn take(&mut self, header: Header, seq: u64) {
        let continues = self.partial.as_ref().is_some_and(|(h, seqs)| {
            h.module == header.module
                && h.version == header.version
                && header.part as usize == seqs.len()
        });
        if !continues {
            // A group another deploy's parts cannot interrupt (they are contiguous); a
            // group cut short (its deployer died mid-publish) is dropped.
            self.partial = None;
            if header.part != 0 {
                return;
            }
        }
        let (h, mut seqs) = self.partial.take().unwrap_or((header.clone(), Vec::new()));
        seqs.push(seq);
        if seqs.len() < h.parts as usize {
            self.partial = Some((h, seqs));
            return;
        }
        let previous = self.heads.get(&h.module);
        if previous.is_some_and(|old| old.version >= h.version) {
            return; // a version already taken (never stored twice; defensive)
        }
        let since = match previous {
            Some(old) if !old.deleted => old.since,
            _ => h.version,
        };
        self.heads.insert(
            h.module.clone(),
            Head {
                module: h.module,
                version: h.version,
                partitions: h.partitions,
                deleted: h.deleted,
                since,
                sha256: h.sha256,
                spread: h.spread,
                parts: seqs,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::log::MemoryLog;
    use super::*;

    #[test]
    fn a_deploy_in_parts_reads_back_whole_on_another_host() {
        let log = Arc::new(MemoryLog::default());
        let a = ModuleCatalog::new(Arc::clone(&log));
        let wasm: Vec<u8> = (0..(2 * PART_BYTES + 5)).map(|i| (i % 251) as u8).collect();
        let head = a.deploy("wordcount", 4, &wasm).unwrap();
        assert_eq!((head.version, head.partitions, head.parts.len()), (1, 4, 3));
        let b = ModuleCatalog::new(Arc::clone(&log));
        b.refresh().unwrap();
        let seen = b.head("wordcount").unwrap();
        assert_eq!(seen, head);
        assert_eq!(b.wasm(&seen).unwrap(), wasm);
    }

    #[test]
    fn a_second_deploy_is_refused_and_a_delete_frees_the_name() {
        let log = Arc::new(MemoryLog::default());
        let a = ModuleCatalog::new(Arc::clone(&log));
        let b = ModuleCatalog::new(Arc::clone(&log));
        a.deploy("m", 2, b"one").unwrap();
        // b has not read a's deploy: its publish expects an older sequence, re-reads, refuses.
        assert!(matches!(
            b.deploy("m", 2, b"two"),
            Err(CatalogError::Exists(_))
        ));
        assert!(b.delete("m").unwrap());
        assert!(!a.delete("m").unwrap());
        a.refresh().unwrap();
        assert!(a.head("m").unwrap().deleted);
        let again = a.deploy("m", 8, b"three").unwrap();
        assert_eq!(
            (again.version, again.partitions, again.deleted, again.since),
            (3, 8, false, 3)
        );
        assert_eq!(b.wasm(&again).unwrap(), b"three");
        // An update keeps the incarnation; b, reading the log from the start, agrees.
        let next = b.update("m", 3, b"four").unwrap();
        assert_eq!((next.version, next.since), (4, 3));
        let fresh = ModuleCatalog::new(Arc::clone(&log));
        fresh.refresh().unwrap();
        assert_eq!(fresh.head("m").unwrap().since, 3);
    }

    #[test]
    fn a_deploy_cut_short_is_never_a_head() {
        let log = Arc::new(MemoryLog::default());
        let header = |part, parts| Header {
            module: "m".into(),
            version: 1,
            part,
            parts,
            partitions: 1,
            deleted: false,
            sha256: String::new(),
            spread: false,
        };
        let out = |h: &Header, id: &str| Outgoing {
            kind: EntryKind::In,
            msg_id: id.into(),
            payload: frame(h, b"x"),
        };
        // Part 0 of 2, then its deployer died; another deploy of the same version follows.
        log.publish(0, &[out(&header(0, 2), "a0")]).unwrap();
        let c = ModuleCatalog::new(Arc::clone(&log));
        c.refresh().unwrap();
        assert_eq!(c.head("m"), None);
        let head = c.deploy("m", 1, b"whole").unwrap();
        assert_eq!(head.parts, vec![2]);
        assert_eq!(c.wasm(&head).unwrap(), b"whole");
    }

    #[test]
    fn a_component_that_does_not_match_its_digest_is_refused() {
        let log = Arc::new(MemoryLog::default());
        let c = ModuleCatalog::new(Arc::clone(&log));
        let mut head = c.deploy("m", 1, b"good").unwrap();
        head.sha256 = sha256_hex(b"other");
        assert!(matches!(c.wasm(&head), Err(CatalogError::Damaged { .. })));
    }
}
