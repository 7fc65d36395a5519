//! Hosts of a cluster and who is alive (CLUSTER.md §0.5: liveness is a hint, safety comes
//! from the fence).
//!
//! Every host puts a heartbeat under its id in the KV bucket `sluice_hosts` (plain `put`,
//! never `update`) every `heartbeat`, and watches the bucket. A host is **alive** while its
//! heartbeat keeps changing: the last change was seen, on this host's monotonic clock, less
//! than `owner_timeout` ago. No clocks are compared across hosts. A host that cannot put its
//! own heartbeat for `owner_timeout` counts itself cut off.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures_util::StreamExt;

use super::jetstream::Nats;

/// The KV bucket of heartbeats.
pub const HOSTS_BUCKET: &str = "sluice_hosts";

/// Opens the heartbeat bucket, creating its stream first if needed. The stream is created
/// here with the KV layout (ADR-8: `KV_<bucket>`, subjects `$KV.<bucket>.>`, one value per
/// key, rollups, direct gets) because async-nats' `create_key_value` first asks for the
/// account info, whose answer from nats-server 2.9 it cannot parse.
async fn open_bucket(nats: &Nats) -> anyhow::Result<kv::Store> {
    use async_nats::jetstream::stream;
    let config = stream::Config {
        name: format!("KV_{HOSTS_BUCKET}"),
        subjects: vec![format!("$KV.{HOSTS_BUCKET}.>")],
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        num_replicas: nats.replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    nats.js
        .get_or_create_stream(config)
        .await
        .map_err(|e| anyhow::anyhow!("creating the `{HOSTS_BUCKET}` bucket: {e}"))?;
    nats.js
        .get_key_value(HOSTS_BUCKET)
        .await
        .map_err(|e| anyhow::anyhow!("opening the `{HOSTS_BUCKET}` bucket: {e}"))
}

/// What a host says about itself in each heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Heartbeat {
    pub host: String,
    /// Its HTTP address.
    pub address: String,
    /// Counts up with every heartbeat (a restart starts again at 1).
    pub beat: u64,
    /// The modules it runs (a routing hint: the partition logs' epochs decide).
    #[serde(default)]
    pub owns: Vec<OwnedModule>,
}

/// A module a host runs, as its heartbeats say.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OwnedModule {
    pub module: String,
    pub version: u64,
    pub partitions: Vec<OwnedPartition>,
    /// The catalog's newer version this host could not switch to, if the last try failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_failed: Option<UpdateFailed>,
}

/// An update a host tried and failed; it tries again after a growing pause.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpdateFailed {
    pub version: u64,
    pub error: String,
    /// Tries so far.
    pub attempts: u32,
}

/// One partition of a module a host runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OwnedPartition {
    pub partition: u32,
    /// The epoch this host claimed it at.
    pub epoch: u64,
    /// The sequence of the last entry this host stored in its log.
    pub log_seq: u64,
    /// Records appended to its depots and not yet processed by its stream topologies, summed
    /// over topologies (`sluice_topology_lag_records`): how far its PStates trail its log.
    pub lag: u64,
    /// The partition's state on this host (`serving`, `failed`, …).
    pub state: String,
}

/// One host as this host sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostView {
    pub host: String,
    pub address: String,
    pub alive: bool,
    /// Milliseconds since its heartbeat last changed, on this host's clock.
    pub last_heartbeat_ms_ago: u64,
    pub beat: u64,
    pub owns: Vec<OwnedModule>,
}

struct Seen {
    heartbeat: Heartbeat,
    revision: u64,
    changed: Instant,
}

/// After this host was out of touch (cut off from NATS, or paused) — its previous heartbeat
/// stored at `before`, longer than the owner timeout before `now` — what it saw of the others
/// is stale: their heartbeats went on while it could not read them. So each of them counts as
/// seen `now`, and is judged dead only if its heartbeat then stays still for a whole timeout
/// this host watched. Without this, a host back from a cut would take everyone for dead and
/// claim what they run, before its watch caught up.
fn back_in_touch(
    seen: &mut BTreeMap<String, Seen>,
    before: Instant,
    now: Instant,
    owner_timeout: Duration,
) {
    if now.saturating_duration_since(before) < owner_timeout {
        return;
    }
    for s in seen.values_mut() {
        s.changed = s.changed.max(now);
    }
}

/// This host's membership: its heartbeats and its view of the others.
pub struct Membership {
    pub host: String,
    pub address: String,
    owner_timeout: Duration,
    kv: kv::Store,
    seen: Mutex<BTreeMap<String, Seen>>,
    /// When this host's own heartbeat was last stored.
    own_ok: Mutex<Instant>,
    /// What this host's heartbeats say it runs ([`Membership::report`]).
    owns: Mutex<Vec<OwnedModule>>,
}

impl Membership {
    /// Opens (or creates) the heartbeat bucket and puts the first heartbeat.
    pub async fn join(
        nats: &Nats,
        host: &str,
        address: &str,
        owner_timeout: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let kv = open_bucket(nats).await?;
        let me = Arc::new(Self {
            host: host.into(),
            address: address.into(),
            owner_timeout,
            kv,
            seen: Mutex::new(BTreeMap::new()),
            own_ok: Mutex::new(Instant::now()),
            owns: Mutex::new(Vec::new()),
        });
        me.beat(1).await?;
        Ok(me)
    }

    async fn beat(&self, beat: u64) -> anyhow::Result<()> {
        let heartbeat = Heartbeat {
            host: self.host.clone(),
            address: self.address.clone(),
            beat,
            owns: self.owns.lock().expect("poisoned").clone(),
        };
        let bytes = serde_json::to_vec(&heartbeat).expect("serializable");
        self.kv.put(&self.host, bytes.into()).await?;
        let now = Instant::now();
        let before = std::mem::replace(&mut *self.own_ok.lock().expect("poisoned"), now);
        back_in_touch(
            &mut self.seen.lock().expect("poisoned"),
            before,
            now,
            self.owner_timeout,
        );
        Ok(())
    }

    /// Starts the heartbeat and the watch on the current runtime; they run until the process
    /// ends.
    pub fn spawn(self: &Arc<Self>, heartbeat: Duration) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut beat = 1;
            loop {
                tokio::time::sleep(heartbeat).await;
                beat += 1;
                if let Err(e) = me.beat(beat).await {
                    tracing::warn!("heartbeat of {} not stored: {e}", me.host);
                }
            }
        });
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                if let Err(e) = me.watch().await {
                    tracing::warn!("watching `{HOSTS_BUCKET}`: {e}");
                }
                tokio::time::sleep(heartbeat).await;
            }
        });
    }

    /// Follows every heartbeat until the watch fails.
    async fn watch(&self) -> anyhow::Result<()> {
        let mut updates = self.kv.watch_with_history(">").await?;
        while let Some(entry) = updates.next().await {
            let entry = entry?;
            let Ok(heartbeat) = serde_json::from_slice::<Heartbeat>(&entry.value) else {
                continue;
            };
            self.saw(heartbeat, entry.revision);
        }
        Ok(())
    }

    fn saw(&self, heartbeat: Heartbeat, revision: u64) {
        let mut seen = self.seen.lock().expect("poisoned");
        match seen.get_mut(&heartbeat.host) {
            Some(s) if s.revision >= revision => {}
            Some(s) => {
                s.heartbeat = heartbeat;
                s.revision = revision;
                s.changed = Instant::now();
            }
            None => {
                seen.insert(
                    heartbeat.host.clone(),
                    Seen {
                        heartbeat,
                        revision,
                        changed: Instant::now(),
                    },
                );
            }
        }
    }

    /// Whether this host stored a heartbeat within the owner timeout (else it is cut off).
    pub fn connected(&self) -> bool {
        self.own_ok.lock().expect("poisoned").elapsed() < self.owner_timeout
    }

    /// Every host seen, this one included, by id.
    pub fn hosts(&self) -> Vec<HostView> {
        let seen = self.seen.lock().expect("poisoned");
        let mut out: Vec<HostView> = seen
            .values()
            .filter(|s| s.heartbeat.host != self.host)
            .map(|s| {
                let ago = s.changed.elapsed();
                HostView {
                    host: s.heartbeat.host.clone(),
                    address: s.heartbeat.address.clone(),
                    alive: ago < self.owner_timeout,
                    last_heartbeat_ms_ago: ago.as_millis() as u64,
                    beat: s.heartbeat.beat,
                    owns: s.heartbeat.owns.clone(),
                }
            })
            .collect();
        let own = self.own_ok.lock().expect("poisoned").elapsed();
        out.push(HostView {
            host: self.host.clone(),
            address: self.address.clone(),
            alive: own < self.owner_timeout,
            last_heartbeat_ms_ago: own.as_millis() as u64,
            beat: seen.get(&self.host).map_or(1, |s| s.heartbeat.beat),
            owns: self.owns.lock().expect("poisoned").clone(),
        });
        out.sort_by(|a, b| a.host.cmp(&b.host));
        out
    }

    /// What this host runs, for its next heartbeats and its own view.
    pub fn report(&self, owns: Vec<OwnedModule>) {
        *self.owns.lock().expect("poisoned") = owns;
    }

    pub fn owner_timeout(&self) -> Duration {
        self.owner_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(changed: Instant) -> BTreeMap<String, Seen> {
        BTreeMap::from([(
            "h2".to_string(),
            Seen {
                heartbeat: Heartbeat {
                    host: "h2".into(),
                    address: String::new(),
                    beat: 1,
                    owns: Vec::new(),
                },
                revision: 1,
                changed,
            },
        )])
    }

    #[test]
    fn a_host_back_in_touch_judges_the_others_afresh() {
        let timeout = Duration::from_secs(10);
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(60);
        // In touch all along: what it saw stands (h2 looks dead: still for 60 s).
        let mut s = seen(t0);
        back_in_touch(&mut s, later - Duration::from_secs(1), later, timeout);
        assert_eq!(s["h2"].changed, t0);
        // Out of touch for 60 s: h2 counts as seen now, dead only after a watched timeout.
        let mut s = seen(t0);
        back_in_touch(&mut s, t0, later, timeout);
        assert_eq!(s["h2"].changed, later);
    }
}
