// A query's handle has no write methods: the write is a compile error, not `read-only`.
use sluice_sdk::{PStateDef, QueryCtx, Result};

const COUNTS: PStateDef<String, i64> = PStateDef::new("counts");

fn reset(q: &QueryCtx, word: String) -> Result<()> {
    q.pstate(COUNTS).set(&word, &0)
}

fn main() {
    let _ = reset;
}
