//! Metrics: counters and histograms kept in process, rendered in the Prometheus text format.
//!
//! Owns the process-wide series registry ([`counter`], [`histogram`]) and [`render`]. A series
//! is created on first use and lives as long as the process; hot paths look their series up
//! once and keep the `Arc` (an increment is then one atomic add). Gauges that describe current
//! state (topology lag, queue depths) are not stored: the API computes them at scrape time and
//! passes them to [`render`]. Invariants: a metric name has one type and one help text
//! ([`HELP`]); label values are escaped; histogram buckets are cumulative when rendered.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Every metric: name, type, help.
pub const HELP: &[(&str, &str, &str)] = &[
    ("sluice_appends_total", "counter", "Records accepted for appending, by module, depot and ack level."),
    ("sluice_acks_total", "counter", "Append answers sent, by module, depot, ack level and outcome (ok or error)."),
    ("sluice_ack_latency_seconds", "histogram", "Time from accepting an append to its ack, by module and ack level (append, full)."),
    ("sluice_records_processed_total", "counter", "Records and hops a topology handler processed successfully, by module and topology."),
    ("sluice_handler_retries_total", "counter", "Handler attempts that failed and were retried, by module and topology."),
    ("sluice_dead_letters_total", "counter", "Records and hops given up on after the last attempt, by module and topology."),
    ("sluice_pstate_commits_total", "counter", "PState transactions committed by partition workers, by module (one per worker batch)."),
    ("sluice_worker_items_total", "counter", "Records and hops processed in worker batches, by module (divided by commits: the mean batch size)."),
    ("sluice_topology_lag_records", "gauge", "Records appended to a topology's depots and not yet processed, by module, topology and partition."),
    ("sluice_partition_queue_depth", "gauge", "Appends queued for a partition worker and not yet taken, by module and partition."),
    ("sluice_partition_serving", "gauge", "1 while a partition serves (recovered, not restarting), else 0, by module and partition."),
    ("sluice_partition_restarts", "gauge", "Times a partition failed and was restarted by its supervisor since the module started, by module and partition."),
    ("sluice_partition_durable_position", "gauge", "A partition's durable commit position (its commits are numbered; every one up to this survives a crash), by module and partition."),
    ("sluice_partition_restarts_total", "counter", "Partition failures that made the supervisor restart the partition, by module."),
    ("sluice_hops_held_total", "counter", "Hops a partition held because the target partition's queue had --hop-queue-max hops, by module."),
    ("sluice_depot_records_trimmed_total", "counter", "Depot records removed by retention, by module and depot."),
    ("sluice_pstate_migrated_entries_total", "counter", "Stored PState entries rewritten by a migration's background task, by module and PState."),
    ("sluice_pstate_migration_remaining", "gauge", "Entries a PState migration has not rewritten yet (an upper bound: writes migrate entries too), by module and PState."),
    ("sluice_microbatches_total", "counter", "Microbatches applied on every partition, by module and topology."),
    ("sluice_partition_failures_total", "counter", "Partitions that failed for good (damaged files, lost acked data), by module."),
    ("sluice_module_load_failures_total", "counter", "Modules that failed to load at start (damaged or missing files), by module."),
    ("sluice_module_failed", "gauge", "1 for each module that failed to load at start and serves nothing, by module."),
    ("sluice_guest_call_duration_seconds", "histogram", "Duration of guest calls, by module and kind (define, handle, query)."),
    ("sluice_guest_failures_total", "counter", "Guest calls that failed, by module and code (trap, deadline-exceeded, memory-limit, guest-error)."),
    ("sluice_query_duration_seconds", "histogram", "Query topology latency seen by the API, by module and query."),
    ("sluice_queries_total", "counter", "Queries answered, by module, query and outcome."),
    ("sluice_module_version", "gauge", "The running version of each module."),
    ("sluice_http_requests_total", "counter", "HTTP requests answered, by status code."),
    ("sluice_component_compiles_total", "counter", "Components compiled (not found in the compiled-module cache), by outcome (ok or refused after compiling)."),
    ("sluice_subscribers", "gauge", "Subscribers (SSE streams) connected now, by module."),
    ("sluice_subscriptions_total", "counter", "Subscriptions started, by module."),
    ("sluice_subscription_events_total", "counter", "Subscription events (value, diff, reset) handed to subscribers, by module."),
    ("sluice_subscription_drops_total", "counter", "Subscribers dropped by the host, by reason (too-slow: their buffer was full)."),
];

/// Upper bounds (seconds) of every histogram's buckets.
pub const BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; 17],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Series {
    counters: BTreeMap<(&'static str, Labels), Arc<AtomicU64>>,
    histograms: BTreeMap<(&'static str, Labels), Arc<Histogram>>,
}

fn series() -> &'static Mutex<Series> {
    static SERIES: OnceLock<Mutex<Series>> = OnceLock::new();
    SERIES.get_or_init(Default::default)
}

fn labels(l: &[(&'static str, &str)]) -> Labels {
    l.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// The counter `name` with these labels (created at 0 on first use).
pub fn counter(name: &'static str, l: &[(&'static str, &str)]) -> Arc<AtomicU64> {
    debug_assert!(HELP.iter().any(|(n, t, _)| *n == name && *t == "counter"));
    let mut s = series().lock().expect("poisoned");
    Arc::clone(s.counters.entry((name, labels(l))).or_default())
}

/// The histogram `name` with these labels.
pub fn histogram(name: &'static str, l: &[(&'static str, &str)]) -> Arc<Histogram> {
    debug_assert!(HELP.iter().any(|(n, t, _)| *n == name && *t == "histogram"));
    let mut s = series().lock().expect("poisoned");
    Arc::clone(s.histograms.entry((name, labels(l))).or_default())
}

/// Adds 1 to a counter looked up by name (for paths not hot enough to cache the handle).
pub fn inc(name: &'static str, l: &[(&'static str, &str)]) {
    counter(name, l).fetch_add(1, Ordering::Relaxed);
}

/// A gauge value computed at scrape time.
pub struct Gauge {
    pub name: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn label_text(l: &[(&'static str, String)], extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// Every series, plus `gauges`, in the Prometheus text exposition format (version 0.0.4).
pub fn render(gauges: &[Gauge]) -> String {
    let s = series().lock().expect("poisoned");
    let mut out = String::new();
    for (name, kind, help) in HELP {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        match *kind {
            "counter" => {
                for ((n, l), v) in s.counters.range((*name, Vec::new())..) {
                    if n != name {
                        break;
                    }
                    let _ = writeln!(
                        out,
                        "{name}{} {}",
                        label_text(l, None),
                        v.load(Ordering::Relaxed)
                    );
                }
            }
            "histogram" => {
                for ((n, l), h) in s.histograms.range((*name, Vec::new())..) {
                    if n != name {
                        break;
                    }
                    let mut cumulative = 0;
                    for (b, c) in BUCKETS.iter().zip(&h.buckets) {
                        cumulative += c.load(Ordering::Relaxed);
                        let _ = writeln!(
                            out,
                            "{name}_bucket{} {cumulative}",
                            label_text(l, Some(("le", &b.to_string())))
                        );
                    }
                    let count = h.count.load(Ordering::Relaxed);
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {count}",
                        label_text(l, Some(("le", "+Inf")))
                    );
                    let _ = writeln!(
                        out,
                        "{name}_sum{} {}",
                        label_text(l, None),
                        h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
                    );
                    let _ = writeln!(out, "{name}_count{} {count}", label_text(l, None));
                }
            }
            _ => {
                for g in gauges.iter().filter(|g| g.name == *name) {
                    let _ = writeln!(out, "{name}{} {}", label_text(&g.labels, None), g.value);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        counter(
            "sluice_queries_total",
            &[("module", "m\"x"), ("query", "q"), ("outcome", "ok")],
        )
        .fetch_add(3, Ordering::Relaxed);
        let h = histogram(
            "sluice_query_duration_seconds",
            &[("module", "m"), ("query", "q")],
        );
        h.observe(Duration::from_micros(70));
        h.observe(Duration::from_millis(3));
        let text = render(&[Gauge {
            name: "sluice_module_version",
            labels: vec![("module", "m".into())],
            value: 2.0,
        }]);
        assert!(
            text.contains("sluice_queries_total{module=\"m\\\"x\",query=\"q\",outcome=\"ok\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(
                "sluice_query_duration_seconds_bucket{module=\"m\",query=\"q\",le=\"0.0001\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "sluice_query_duration_seconds_bucket{module=\"m\",query=\"q\",le=\"0.005\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("sluice_query_duration_seconds_count{module=\"m\",query=\"q\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("sluice_module_version{module=\"m\"} 2"),
            "{text}"
        );
        assert!(text.contains("# TYPE sluice_topology_lag_records gauge"));
    }
}
