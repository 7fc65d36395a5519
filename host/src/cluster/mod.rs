//! The cluster (CLUSTER.md): a module's partitions spread over several hosts, each
//! partition's log replicated by NATS JetStream, one owner at a time.
//!
//! Code map:
//! - [`log`]: the replicated-log seam (one fenced stream per partition) and its in-memory
//!   model for simulations;
//! - [`jetstream`]: the NATS connection (`sluice serve --cluster`) and that seam on
//!   JetStream (async-nats);
//! - [`fence`]: ownership by fence: epochs, claims, the owner's fenced writer, restore;
//! - [`replicated`]: a partition's seams over its replicated log (append and commit go to
//!   the log first), and restoring the local files from it;
//! - [`codec`]: the bodies of `In` (appended records) and `Fx` (commits) entries;
//! - [`membership`]: hosts, heartbeats and who is alive;
//! - [`catalog`]: the modules deployed on the cluster, their components in JetStream;
//! - [`placement`]: which host runs which module, claims after a host dies, routing;
//! - [`remote`]: a spread module's partitions on other hosts: appends, hops and event
//!   trees between hosts over core NATS;
//! - [`pinned`]: the snapshots a partition's owner holds for queries of other hosts (one
//!   snapshot per partition per query).
//!
//! Without `--cluster` none of this runs: the host is the embedded single node.

pub mod catalog;
pub mod codec;
pub mod fence;
pub mod jetstream;
pub mod log;
pub mod membership;
pub mod pinned;
pub mod placement;
pub mod remote;
pub mod replicated;
