//! The replicated log on NATS JetStream: stream `SL_<module>_P<k>` with subjects
//! `sl.<module>.<k>.{in,fx,ctl}` (CLUSTER.md §0.3), file storage, R3 on a three-server
//! cluster (R1 for a one-server development cluster).
//!
//! Uses only what nats-server 2.9.10 has: stream-wide `Nats-Expected-Last-Sequence` (exact
//! under concurrency on 2.9 R3, CLUSTER.md §1.1) and `Nats-Msg-Id` dedup; never
//! `Nats-Expected-Last-Subject-Sequence` nor KV `update` (not exclusive on 2.9 R3). A read
//! asks the stream leader for the last sequence, then takes the entries up to it from a pull
//! consumer (one round trip per batch; it is kept while reads continue one another) and
//! whatever the consumer did not deliver promptly one by one from the leader
//! (`STREAM.MSG.GET`): a claimant sees the whole tail the leader had. A consumer on a replica
//! can only be behind, never different (replicas apply the same committed Raft log), so an
//! entry is taken from it only at the exact sequence expected next.
//!
//! The seam is synchronous (the partition worker is a thread): each call blocks on the
//! runtime the client lives on, so it must not be called from one of its worker threads.

use std::future::IntoFuture;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use futures_util::future::join_all;
use futures_util::StreamExt;

use super::log::{EntryKind, LogError, Outgoing, PublishFailure, ReplicatedLog, Stored};

/// How long one publish or read waits for its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a read waits for its consumer to deliver a batch before taking the rest one by one.
const STREAMED_WAIT: Duration = Duration::from_millis(500);
/// A read's consumer is removed by the server after this long without a pull.
const READER_IDLE: Duration = Duration::from_secs(5);
/// How long reads take entries one by one after streaming them failed.
const ONE_BY_ONE_FOR: Duration = Duration::from_secs(5);

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

/// The stream name and subject prefix of one partition of the incarnation of `module` that
/// version `since` created (`catalog::Head::since`): the first incarnation's are
/// `SL_<module>_P<k>` / `sl.<module>.<k>`, a later one's `SL_<module>_I<since>_P<k>` /
/// `sl.<module>.i<since>.<k>`, so that a module deployed again after a delete starts empty.
pub fn stream_name(module: &str, since: u64, partition: u32) -> (String, String) {
    if since <= 1 {
        (
            format!("SL_{module}_P{partition}"),
            format!("sl.{module}.{partition}"),
        )
    } else {
        (
            format!("SL_{module}_I{since}_P{partition}"),
            format!("sl.{module}.i{since}.{partition}"),
        )
    }
}

/// One partition's log in JetStream.
pub struct JetStreamLog {
    nats: Nats,
    stream: String,
    prefix: String,
    /// The consumer the last read took entries from, if it may go on (reads that continue one
    /// another, as a restore makes them, pull from it), and until when reads take entries one
    /// by one only (set when a consumer could not be made or delivered nothing: during a NATS
    /// fault each attempt would cost its wait again).
    reader: tokio::sync::Mutex<Reading>,
}

#[derive(Default)]
struct Reading {
    reader: Option<Reader>,
    one_by_one_until: Option<std::time::Instant>,
}

/// A pull consumer positioned at `next`.
struct Reader {
    consumer: PullConsumer,
    next: u64,
}

impl JetStreamLog {
    /// Opens the partition's stream, creating it if it does not exist.
    pub async fn open(
        nats: &Nats,
        module: &str,
        since: u64,
        partition: u32,
    ) -> Result<Self, LogError> {
        let (name, prefix) = stream_name(module, since, partition);
        Self::open_stream(nats, name, prefix).await
    }

    /// Deletes the partition's stream (a deleted module's); a stream already gone is fine.
    pub async fn delete(
        nats: &Nats,
        module: &str,
        since: u64,
        partition: u32,
    ) -> Result<(), LogError> {
        let (name, _) = stream_name(module, since, partition);
        use async_nats::jetstream::context::DeleteStreamErrorKind;
        match nats.js.delete_stream(&name).await {
            Ok(_) => Ok(()),
            Err(e) => match e.kind() {
                DeleteStreamErrorKind::JetStream(j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(())
                }
                _ => Err(LogError::Unavailable(format!(
                    "deleting stream {name}: {e}"
                ))),
            },
        }
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
            reader: tokio::sync::Mutex::new(Reading::default()),
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
        let mut out = self.read_streamed(from, to).await;
        let next = out.last().map_or(from, |s| s.seq + 1);
        if next <= to {
            out.extend(self.read_each(next, to).await?);
        }
        Ok(out)
    }

    /// Entries from `from` up to `to`, in order, as far as the read's consumer delivers them
    /// within [`STREAMED_WAIT`]; the consumer is kept for a read from where this one stopped,
    /// and dropped at anything unexpected (an error, a sequence out of order).
    async fn read_streamed(&self, from: u64, to: u64) -> Vec<Stored> {
        let mut reading = self.reader.lock().await;
        if reading
            .one_by_one_until
            .is_some_and(|t| std::time::Instant::now() < t)
        {
            return Vec::new();
        }
        let consumer = match reading.reader.take() {
            Some(r) if r.next == from => Some(r.consumer),
            _ => tokio::time::timeout(STREAMED_WAIT, self.consumer_at(from))
                .await
                .ok()
                .flatten(),
        };
        // Bounded as a whole: a server that stopped answering must not hold the read.
        let out = match consumer {
            Some(c) => tokio::time::timeout(
                2 * STREAMED_WAIT,
                Self::pull(c, from, to, &mut reading.reader),
            )
            .await
            .unwrap_or_default(),
            None => Vec::new(),
        };
        reading.one_by_one_until = out
            .is_empty()
            .then(|| std::time::Instant::now() + ONE_BY_ONE_FOR);
        out
    }

    /// Pulls entries from `from` up to `to` from `consumer`; leaves it in `keep` positioned
    /// after them unless anything unexpected happened.
    async fn pull(
        consumer: PullConsumer,
        from: u64,
        to: u64,
        keep: &mut Option<Reader>,
    ) -> Vec<Stored> {
        let want = (to - from + 1) as usize;
        let mut out: Vec<Stored> = Vec::with_capacity(want);
        let Ok(mut batch) = consumer
            .batch()
            .max_messages(want)
            .expires(STREAMED_WAIT)
            .messages()
            .await
        else {
            return out;
        };
        while let Some(m) = batch.next().await {
            let expected = from + out.len() as u64;
            let taken = m.ok().and_then(|m| {
                let seq = m.info().ok()?.stream_sequence;
                if seq != expected {
                    return None;
                }
                stored(seq, m.subject.as_str(), m.headers.as_ref(), &m.payload).ok()
            });
            match taken {
                Some(s) => out.push(s),
                // The rest is taken one by one (where an unknown subject is an error).
                None => return out,
            }
        }
        *keep = Some(Reader {
            consumer,
            next: from + out.len() as u64,
        });
        out
    }

    /// A pull consumer on this stream delivering from sequence `from` (none if it cannot be
    /// made now: the read takes its entries one by one).
    async fn consumer_at(&self, from: u64) -> Option<PullConsumer> {
        let stream = self.stream_handle().await.ok()?;
        stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: READER_IDLE,
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .ok()
    }

    /// The stream, for requests to its leader (no info request on the way).
    async fn stream_handle(&self) -> Result<async_nats::jetstream::stream::Stream<()>, LogError> {
        self.nats
            .js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|e| LogError::Unavailable(e.to_string()))
    }

    /// Entries `from..=to`, each asked of the stream leader.
    async fn read_each(&self, from: u64, to: u64) -> Result<Vec<Stored>, LogError> {
        let stream = self.stream_handle().await?;
        let gets = (from..=to).map(|seq| {
            let stream = &stream;
            async move { (seq, stream.get_raw_message(seq).await) }
        });
        let mut out = Vec::with_capacity((to - from + 1) as usize);
        for (seq, got) in join_all(gets).await {
            let m = got.map_err(|e| LogError::Unavailable(format!("message {seq}: {e}")))?;
            out.push(stored(
                m.sequence,
                m.subject.as_str(),
                Some(&m.headers),
                &m.payload,
            )?);
        }
        Ok(out)
    }

    async fn last_claim_async(&self) -> Result<Option<Stored>, LogError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let stream = self.stream_handle().await?;
        let subject = format!("{}.{}", self.prefix, EntryKind::Ctl.token());
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => Ok(Some(stored(
                m.sequence,
                m.subject.as_str(),
                Some(&m.headers),
                &m.payload,
            )?)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(LogError::Unavailable(format!("the last claim: {e}"))),
        }
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

/// A stored entry from its subject (`<prefix>.<kind>`), headers and payload.
fn stored(
    seq: u64,
    subject: &str,
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Result<Stored, LogError> {
    let kind = subject
        .rsplit('.')
        .next()
        .and_then(EntryKind::from_token)
        .ok_or_else(|| LogError::Refused(format!("unknown subject {subject}")))?;
    let msg_id = headers
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    Ok(Stored {
        seq,
        kind,
        msg_id,
        payload: payload.to_vec(),
    })
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

    /// One request to the stream leader: the last message on the `ctl` subject.
    fn last_claim(&self) -> Result<Option<Stored>, LogError> {
        self.nats.runtime.block_on(self.last_claim_async())
    }
}
