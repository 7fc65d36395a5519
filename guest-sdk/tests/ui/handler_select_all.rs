// A handler reads only its own partition: its handle has no `select_all`.
use sluice_sdk::{Ctx, PStateDef, Path, Result};

const COUNTS: PStateDef<String, i64> = PStateDef::new("counts");

fn total(ctx: &Ctx, _: String) -> Result<()> {
    let _ = ctx.pstate(COUNTS).select_all::<i64>(&Path::new().map_vals())?;
    Ok(())
}

fn main() {
    let _ = total;
}
