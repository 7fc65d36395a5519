//! The goals of issue 15, as each benchmark measures them: a bench that measures a goal
//! records one row here (appended as a JSON line to `target/bench-goals.jsonl`), and
//! `make bench` renders every row of its run into one table, `target/bench-goals.md`
//! (`scripts/bench-goals.py`), so the table at the top of BENCHMARKS.md comes from one run.

use std::io::Write;

/// Where the rows of this run go (`make bench` empties it first).
fn path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-goals.jsonl")
}

/// How a figure compares with its goal.
pub enum Target {
    /// Met when the ratio (figure ÷ baseline) is at least this.
    RatioAtLeast(f64),
    /// Met when the ratio (figure ÷ baseline) is at most this.
    RatioAtMost(f64),
    /// Met when the measured number itself is below this.
    Below(f64),
    /// Reported, no goal.
    Report,
}

/// Records one row: `goal` (what is asked), `figure` (what was measured, in words),
/// `baseline` (its baseline in the same run, in words), `value` and `base` (the numbers the
/// ratio is made of; `base` 0 for a goal without a baseline).
pub fn record(goal: &str, figure: &str, baseline: &str, value: f64, base: f64, target: Target) {
    let ratio = (base > 0.0).then(|| value / base);
    let met = match target {
        Target::RatioAtLeast(r) => ratio.map(|x| x >= r),
        Target::RatioAtMost(r) => ratio.map(|x| x <= r),
        Target::Below(b) => Some(value < b),
        Target::Report => None,
    };
    let row = serde_json::json!({
        "bench": std::env::args().next().unwrap_or_default().rsplit('/').next().unwrap_or_default().split('-').next().unwrap_or_default(),
        "goal": goal,
        "figure": figure,
        "baseline": baseline,
        "ratio": ratio.map(|r| (r * 100.0).round() / 100.0),
        "met": met,
    });
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path());
    if let Ok(mut f) = file {
        let _ = writeln!(f, "{row}");
    }
}
