//! The replicated log on NATS JetStream: stream `SL_<module>_P<k>` with subjects
//! `sl.<module>.<k>.{in,fx,ctl}` (CLUSTER.md §0.3), file storage, R3 on a three-server
//! cluster (R1 for a one-server development cluster).
//!
//! Uses only what nats-server 2.9.10 has: stream-wide `Nats-Expected-Last-Sequence` (exact
//! under concurrency on 2.9 R3, CLUSTER.md §1.1) and `Nats-Msg-Id` dedup; never
//! `Nats-Expected-Last-Subject-Sequence` nor KV `update` (not exclusive on 2.9 R3). Reads go
//! through the stream leader (`STREAM.MSG.GET`), never a replica: a claimant must see the
//! tail it expects.
//!
//! The seam is synchronous (the partition worker is a thread): each call blocks on the
//! runtime the client lives on, so it must not be called from one of its worker threads.

use std::future::IntoFuture;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use futures_util::future::join_all;

use super::log::{EntryKind, LogError, Outgoing, PublishFailure, ReplicatedLog, Stored};

/// How long one publish or read waits for its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to the cluster's NATS servers.
#[derive(Clone)]
pub struct Nats {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    /// The runtime the client's tasks run on (blocking calls wait on it).
    pub runtime: tokio::runtime::Handle,
    /// Replicas of every stream and bucket Sluice creates.
    pub replicas: usize,
}

impl Nats {
    /// Connects to `urls` (comma-separated `nats://host:port`); retries until a server
    /// answers or `within` passes. Only the servers named are used (not those a server
    /// advertises): a host reaches NATS the way its operator said.
    pub async fn connect(
        urls: &str,
        name: &str,
        replicas: usize,
        within: Duration,
    ) -> anyhow::Result<Self> {
        let options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(within)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .retry_on_initial_connect()
            .ignore_discovered_servers();
        let addrs: Vec<async_nats::ServerAddr> = urls
            .split(',')
            .map(|u| u.trim().parse())
            .collect::<Result<_, _>>()?;
        let client = tokio::time::timeout(within, options.connect(addrs))
            .await
            .map_err(|_| {
                anyhow::anyhow!("no NATS server at {urls} answered within {within:?}")
            })??;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(REQUEST_TIMEOUT);
        Ok(Self {
            client,
            js,
            runtime: tokio::runtime::Handle::current(),
            replicas,
        })
    }
}

/// The stream name and subject prefix of one partition.
pub fn stream_name(module: &str, partition: u32) -> (String, String) {
    (
        format!("SL_{module}_P{partition}"),
        format!("sl.{module}.{partition}"),
    )
}

/// One partition's log in JetStream.
pub struct JetStreamLog {
    nats: Nats,
    stream: String,
    prefix: String,
}

impl JetStreamLog {
    /// Opens the partition's stream, creating it if it does not exist.
    pub async fn open(nats: &Nats, module: &str, partition: u32) -> Result<Self, LogError> {
        let (name, prefix) = stream_name(module, partition);
        Self::open_stream(nats, name, prefix).await
    }

    /// Opens (or creates) the stream `name` on the subjects `<prefix>.{in,fx,ctl}`.
    pub async fn open_stream(nats: &Nats, name: String, prefix: String) -> Result<Self, LogError> {
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            storage: stream::StorageType::File,
            num_replicas: nats.replicas,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        nats.js
            .get_or_create_stream(config)
            .await
            .map_err(|e| LogError::Unavailable(format!("stream {name}: {e}")))?;
        Ok(Self {
            nats: nats.clone(),
            stream: name,
            prefix,
        })
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    async fn publish_async(
        &self,
        expected_last: u64,
        entries: &[Outgoing],
    ) -> Result<(), PublishFailure> {
        let mut acks = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let publish = jetstream::message::PublishMessage::build()
                .payload(e.payload.clone().into())
                .message_id(&e.msg_id)
                .expected_last_sequence(expected_last + i as u64);
            let subject = format!("{}.{}", self.prefix, e.kind.token());
            match self.nats.js.send_publish(subject, publish).await {
                Ok(ack) => acks.push(ack),
                Err(err) => {
                    // Nothing after this was sent; what was sent is awaited below.
                    let error = publish_error(err.kind(), err.to_string());
                    let stored = self.settle(acks, expected_last).await.err();
                    return Err(stored.unwrap_or(PublishFailure {
                        stored: entries.len().min(i),
                        error,
                    }));
                }
            }
        }
        self.settle(acks, expected_last).await
    }

    /// Awaits the acks of pipelined publishes, in order.
    async fn settle(
        &self,
        acks: Vec<jetstream::context::PublishAckFuture>,
        expected_last: u64,
    ) -> Result<(), PublishFailure> {
        let sent = acks.len();
        for (i, ack) in join_all(acks.into_iter().map(|a| a.into_future()))
            .await
            .into_iter()
            .enumerate()
        {
            let failure = |error| PublishFailure { stored: i, error };
            match ack {
                Ok(ack) if ack.sequence == expected_last + i as u64 + 1 => {}
                Ok(ack) => {
                    return Err(failure(LogError::WrongLastSequence {
                        expected: ack.sequence.saturating_sub(1),
                    }))
                }
                Err(err) => return Err(failure(publish_error(err.kind(), err.to_string()))),
            }
        }
        let _ = sent;
        Ok(())
    }

    async fn read_async(&self, from: u64, max: usize) -> Result<Vec<Stored>, LogError> {
        let last = self.last_seq_async().await?;
        let from = from.max(1);
        if from > last || max == 0 {
            return Ok(Vec::new());
        }
        let to = last.min(from + max as u64 - 1);
        let stream = self
            .nats
            .js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        let gets = (from..=to).map(|seq| {
            let stream = &stream;
            async move { (seq, stream.get_raw_message(seq).await) }
        });
        let mut out = Vec::with_capacity((to - from + 1) as usize);
        for (seq, got) in join_all(gets).await {
            let m = got.map_err(|e| LogError::Unavailable(format!("message {seq}: {e}")))?;
            let kind = m
                .subject
                .rsplit('.')
                .next()
                .and_then(EntryKind::from_token)
                .ok_or_else(|| LogError::Refused(format!("unknown subject {}", m.subject)))?;
            let msg_id = m
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            out.push(Stored {
                seq: m.sequence,
                kind,
                msg_id,
                payload: m.payload.to_vec(),
            });
        }
        Ok(out)
    }

    async fn last_seq_async(&self) -> Result<u64, LogError> {
        let mut stream = self
            .nats
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        let info = stream
            .info()
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))?;
        Ok(info.state.last_sequence)
    }

    /// The stream's current leader (a NATS server name), for fault tests and the cluster view.
    pub fn leader(&self) -> Option<String> {
        self.nats.runtime.block_on(async {
            let mut stream = self.nats.js.get_stream(&self.stream).await.ok()?;
            let info = stream.info().await.ok()?;
            info.cluster.as_ref().and_then(|c| c.leader.clone())
        })
    }
}

fn publish_error(kind: PublishErrorKind, message: String) -> LogError {
    match kind {
        PublishErrorKind::WrongLastSequence => LogError::WrongLastSequence { expected: 0 },
        PublishErrorKind::MaxPayloadExceeded => LogError::Refused(message),
        // "No stream" is what a publish gets while the stream has no leader (an election):
        // the stream exists, it was opened before any publish.
        _ => LogError::Unavailable(message),
    }
}

impl ReplicatedLog for JetStreamLog {
    fn publish(&self, expected_last: u64, entries: &[Outgoing]) -> Result<(), PublishFailure> {
        self.nats
            .runtime
            .block_on(self.publish_async(expected_last, entries))
    }

    fn read(&self, from: u64, max: usize) -> Result<Vec<Stored>, LogError> {
        self.nats.runtime.block_on(self.read_async(from, max))
    }

    fn last_seq(&self) -> Result<u64, LogError> {
        self.nats.runtime.block_on(self.last_seq_async())
    }
}
