//! The `sluice` binary: `sluice serve` runs a host; the other subcommands are its clients
//! (`sluice::cli`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use sluice::api::conn::ConnLimits;
use sluice::api::{serve, AppState};
use sluice::config::{Config, Limits};
use sluice::module::Registry;

/// mimalloc instead of glibc's malloc: the per-record path allocates small buffers on many
/// threads (JSON trees, CBOR, redb pages), where glibc's arenas spent ~22% of the host's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: application backends from WebAssembly modules"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a host.
    Serve(Box<ServeArgs>),
    #[command(flatten)]
    Client(sluice::cli::Command),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:7470")]
    listen: SocketAddr,
    /// Where modules and their data live.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Listen on a non-loopback address without authentication.
    #[arg(long)]
    insecure: bool,
    /// A bearer token, as ROLE=TOKEN with ROLE one of read, write, admin (repeatable).
    #[arg(long = "token", env = "SLUICE_TOKENS", value_delimiter = ',')]
    tokens: Vec<String>,
    /// A file of ROLE=TOKEN lines.
    #[arg(long)]
    tokens_file: Option<PathBuf>,
    /// Open connections beyond this are answered 503 (after their request head) and closed.
    #[arg(long, default_value_t = ConnLimits::default().connections_max)]
    connections_max: usize,
    /// Open connections one client address may hold; beyond it, 503.
    #[arg(long, default_value_t = ConnLimits::default().connections_per_address_max)]
    connections_per_address_max: usize,
    /// How long the host waits for a request head, on a new connection or an idle keep-alive
    /// one, before closing it.
    #[arg(long, default_value_t = ConnLimits::default().header_read_timeout.as_millis() as u64)]
    header_read_timeout_ms: u64,
    /// How long a request body may take to arrive (408 after).
    #[arg(long, default_value_t = ConnLimits::default().body_read_timeout.as_millis() as u64)]
    body_read_timeout_ms: u64,
    /// Blocking reads (selects, depot reads, dead letters, metrics) running at once; more wait
    /// up to 5 s, then 503 `too-busy`.
    #[arg(long, default_value_t = sluice::api::pools::READS_CONCURRENT_MAX)]
    reads_concurrent_max: usize,
    /// Query calls running at once; more wait up to 5 s, then 503 `too-busy`.
    #[arg(long, default_value_t = sluice::api::pools::QUERIES_CONCURRENT_MAX)]
    queries_concurrent_max: usize,
    /// How long an answer may make no progress (a client not reading it) before the
    /// connection is closed.
    #[arg(long, default_value_t = ConnLimits::default().write_stall_timeout.as_millis() as u64)]
    write_stall_timeout_ms: u64,
    /// redb's page cache for the whole host in MiB, split evenly over the open partition
    /// files (each gets at least 1 MiB).
    #[arg(long, default_value_t = sluice::config::CACHE_BUDGET_BYTES_DEFAULT >> 20)]
    cache_mb: usize,
    /// Verify every page checksum of every partition file when the host opens it (reads every
    /// file whole at start); `false` starts faster and finds damage only when it is read.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    verify_on_open: bool,
    /// Where compiled components are cached (default: DATA_DIR/cache). Several hosts may share
    /// one; it must be private to the hosts' user, since its files are loaded as machine code.
    #[arg(long)]
    compile_cache_dir: Option<PathBuf>,
    /// For tests: run on a wall clock starting at this time (ms since the Unix epoch) that
    /// moves only by `POST /v1/clock {"advance_ms": N}` (tick depots without sleeping).
    #[arg(long)]
    manual_clock_ms: Option<u64>,
    /// The largest depot-read or select answer in bytes; past it the answer is cut and
    /// carries `next` (a select without `limit` is refused with 413 instead).
    #[arg(long, default_value_t = Limits::default().answer_bytes_max)]
    answer_bytes_max: usize,
    /// Hops one partition's queue holds at most; senders hold the rest (durable in their
    /// outbox) until it drains.
    #[arg(long, default_value_t = Limits::default().hop_queue_max)]
    hop_queue_max: usize,
    /// The most records of one depot partition one microbatch takes.
    #[arg(long, default_value_t = Limits::default().microbatch_records_max)]
    microbatch_records_max: u64,
    /// How long an append's `Idempotency-Key` is remembered, in seconds.
    #[arg(long, default_value_t = Limits::default().idempotency_window_ms / 1000)]
    idempotency_window_s: u64,
    /// An origin browsers may call the API from (CORS), e.g. `https://app.example`; repeat
    /// for several, `*` for any. Without it, no CORS headers are sent.
    #[arg(long = "cors-origin")]
    cors_origins: Vec<String>,
    /// Subscribers (SSE streams) the host serves at once.
    #[arg(long, default_value_t = Limits::default().subscribers_max)]
    subscribers_max: usize,
    /// Subscribers one module may have at once.
    #[arg(long, default_value_t = Limits::default().subscribers_per_module_max)]
    subscribers_per_module_max: usize,
    /// Events buffered per subscriber; one that falls further behind is dropped.
    #[arg(long, default_value_t = Limits::default().subscriber_buffer_events)]
    subscriber_buffer_events: usize,
    /// How often a quiet subscription gets a keep-alive comment, in milliseconds.
    #[arg(long, default_value_t = Limits::default().subscription_keepalive_ms)]
    subscription_keepalive_ms: u64,
    /// How long a path's recent events outlive its last subscriber (a reconnect within it
    /// resumes from Last-Event-ID without a reset), in milliseconds.
    #[arg(long, default_value_t = Limits::default().subscription_linger_ms)]
    subscription_linger_ms: u64,
    /// Lines one NDJSON append may carry.
    #[arg(long, default_value_t = Limits::default().ndjson_lines_max)]
    ndjson_lines_max: usize,
    /// Navigators one path may have.
    #[arg(long, default_value_t = Limits::default().path_navigators_max)]
    path_navigators_max: usize,
    /// Partitions of a module deployed without `?partitions=`.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Deadline of one guest call, in milliseconds.
    #[arg(long, default_value_t = Limits::default().call_deadline_ms)]
    call_deadline_ms: u64,
    /// Deadline of one query call, in milliseconds.
    #[arg(long, default_value_t = Limits::default().query_deadline_ms)]
    query_deadline_ms: u64,
    /// Linear memory one guest instance may use, in MiB.
    #[arg(long, default_value_t = Limits::default().instance_memory_bytes >> 20)]
    instance_memory_mb: usize,
    /// Largest module accepted, in MiB.
    #[arg(long, default_value_t = Limits::default().module_size_bytes >> 20)]
    module_size_mb: usize,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = Limits::default().request_body_bytes)]
    request_body_bytes: usize,
    /// Largest record, in bytes (CBOR).
    #[arg(long, default_value_t = Limits::default().record_size_bytes)]
    record_size_bytes: usize,
    /// Work items queued per partition before appends get 503.
    #[arg(long, default_value_t = Limits::default().partition_queue_depth)]
    partition_queue_depth: usize,
    /// Records one group commit takes at most.
    #[arg(long, default_value_t = Limits::default().batch_records_max)]
    batch_records_max: usize,
    /// How long PState commits may stay non-durable (the depot log replays them after a crash).
    #[arg(long, default_value_t = Limits::default().pstate_flush_interval_ms)]
    pstate_flush_interval_ms: u64,
    /// How long the microbatch coordinator waits when no new records arrived.
    #[arg(long, default_value_t = Limits::default().microbatch_interval_ms)]
    microbatch_interval_ms: u64,
    /// Values one select may return.
    #[arg(long, default_value_t = Limits::default().select_values_max)]
    select_values_max: usize,
    /// Attempts of a failing handler before the record becomes a dead letter.
    #[arg(long, default_value_t = Limits::default().handler_attempts_max)]
    handler_attempts_max: u32,
    /// Join a cluster through these NATS servers (`nats://HOST:PORT`, comma-separated);
    /// without it the host is a single node and needs no NATS.
    #[arg(long, value_name = "URLS")]
    cluster: Option<String>,
    /// This host's id in the cluster (unique per host; stable across its restarts).
    #[arg(long, requires = "cluster")]
    host_id: Option<String>,
    /// Replicas of each stream the cluster creates: 3 on a three-server NATS cluster, 1 for a
    /// one-server development cluster.
    #[arg(long, default_value_t = 3)]
    cluster_replicas: usize,
    /// How long a host's heartbeat may stay unchanged before peers count it dead (and may
    /// claim its partitions); heartbeats go every fifth of it.
    #[arg(long, default_value_t = 10_000)]
    owner_timeout_ms: u64,
    /// How long a request for a module waits while no host runs it (a failover) before it
    /// is answered 503 with `Retry-After`.
    #[arg(long, default_value_t = 20_000)]
    failover_wait_ms: u64,
}

fn main() -> anyhow::Result<()> {
    let args = match Cli::parse().command {
        Command::Serve(args) => *args,
        Command::Client(command) => std::process::exit(sluice::cli::run(command)),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    run_serve(args)
}

fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut tokens = sluice::api::auth::Tokens::default();
    for spec in &args.tokens {
        tokens.add_spec(spec).map_err(anyhow::Error::msg)?;
    }
    if let Some(file) = &args.tokens_file {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        tokens.add_file(&text).map_err(anyhow::Error::msg)?;
    }
    if !args.listen.ip().is_loopback() && tokens.is_empty() && !args.insecure {
        anyhow::bail!(
            "refusing to listen on non-loopback {} without authentication; configure --token/--tokens-file, or pass --insecure",
            args.listen
        );
    }
    let limits = Limits {
        call_deadline_ms: args.call_deadline_ms,
        query_deadline_ms: args.query_deadline_ms,
        instance_memory_bytes: args.instance_memory_mb << 20,
        module_size_bytes: args.module_size_mb << 20,
        request_body_bytes: args.request_body_bytes,
        record_size_bytes: args.record_size_bytes,
        partition_queue_depth: args.partition_queue_depth,
        batch_records_max: args.batch_records_max.max(1),
        handler_attempts_max: args.handler_attempts_max.max(1),
        pstate_flush_interval_ms: args.pstate_flush_interval_ms,
        select_values_max: args.select_values_max.max(1),
        microbatch_interval_ms: args.microbatch_interval_ms.max(1),
        ndjson_lines_max: args.ndjson_lines_max.max(1),
        path_navigators_max: args.path_navigators_max.max(1),
        answer_bytes_max: args.answer_bytes_max.max(1),
        microbatch_records_max: args.microbatch_records_max.max(1),
        hop_queue_max: args.hop_queue_max.max(1),
        idempotency_window_ms: args.idempotency_window_s.saturating_mul(1000),
        subscribers_max: args.subscribers_max,
        subscribers_per_module_max: args.subscribers_per_module_max,
        subscriber_buffer_events: args.subscriber_buffer_events,
        subscription_keepalive_ms: args.subscription_keepalive_ms,
        subscription_linger_ms: args.subscription_linger_ms,
        ..Limits::default()
    };
    let config = Config {
        data_dir: args.data_dir.clone(),
        limits,
        default_partitions: args.partitions,
        cache_budget_bytes: args.cache_mb << 20,
        verify_on_open: args.verify_on_open,
        compile_cache_dir: args.compile_cache_dir.clone(),
        manual_clock: args
            .manual_clock_ms
            .map(|ms| Arc::new(sluice::partition::seams::ManualClock::new(ms))),
    };
    if args.cluster.is_some() {
        // On a cluster the local module files are a cache of the partition logs: a host
        // starts with none and restores what it claims.
        let modules = args.data_dir.join("modules");
        if modules.exists() {
            std::fs::remove_dir_all(&modules)
                .with_context(|| format!("clearing {}", modules.display()))?;
        }
    }
    let registry = Registry::open(config)
        .with_context(|| format!("opening data dir {}", args.data_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr()?;
        let cluster = match &args.cluster {
            Some(urls) => Some(join_cluster(&args, urls, addr, &registry).await?),
            None => None,
        };
        println!("sluice listening on http://{addr}");
        tracing::info!(%addr, data_dir = %args.data_dir.display(), "listening");
        let state = Arc::new(AppState {
            registry: Arc::clone(&registry),
            tokens,
            conn: ConnLimits {
                connections_max: args.connections_max.max(1),
                connections_per_address_max: args.connections_per_address_max.max(1),
                header_read_timeout: ms(args.header_read_timeout_ms),
                body_read_timeout: ms(args.body_read_timeout_ms),
                write_stall_timeout: ms(args.write_stall_timeout_ms),
            },
            pools: sluice::api::pools::Pools::new(
                args.reads_concurrent_max,
                args.queries_concurrent_max,
            ),
            cors: sluice::api::cors::Cors::new(args.cors_origins.clone()),
            cluster,
        });
        serve(listener, state, shutdown_signal()).await;
        // Subscribers are told the host is stopping (a final `closing` event) before it does.
        registry.subscriptions().close();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        anyhow::Ok(())
    })?;
    tracing::info!("shutting down: draining partitions");
    registry.shutdown();
    Ok(())
}

/// Connects to the cluster's NATS servers, starts this host's heartbeats and its placement
/// loop.
async fn join_cluster(
    args: &ServeArgs,
    urls: &str,
    addr: SocketAddr,
    registry: &Arc<Registry>,
) -> anyhow::Result<Arc<sluice::cluster::placement::Placement>> {
    let host = args
        .host_id
        .clone()
        .ok_or_else(|| anyhow::anyhow!("--cluster needs --host-id"))?;
    anyhow::ensure!(
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "--host-id `{host}`: use letters, digits, `-` and `_`"
    );
    let timeout = ms(args.owner_timeout_ms);
    let nats = sluice::cluster::jetstream::Nats::connect(
        urls,
        &format!("sluice-{host}"),
        args.cluster_replicas.clamp(1, 5),
        std::time::Duration::from_secs(10),
    )
    .await
    .with_context(|| format!("joining the cluster at {urls}"))?;
    // JetStream answers only once its servers elected a meta leader (about a second after
    // they start): retry for a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let address = format!("http://{addr}");
    let membership = loop {
        use sluice::cluster::membership::Membership;
        match Membership::join(&nats, &host, &address, timeout).await {
            Ok(m) => break m,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::warn!("joining the cluster at {urls}: {e:#}; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.context(format!("joining the cluster at {urls}"))),
        }
    };
    membership.spawn(timeout / 5);
    let placement = sluice::cluster::placement::Placement::open(
        nats,
        membership,
        Arc::clone(registry),
        ms(args.failover_wait_ms),
    )
    .await?;
    placement.spawn(timeout / 5);
    tracing::info!(%host, %urls, "joined the cluster");
    Ok(placement)
}

fn ms(ms: u64) -> std::time::Duration {
    std::time::Duration::from_millis(ms.max(1))
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
