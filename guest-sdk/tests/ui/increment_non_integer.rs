// `increment` exists only on PStates whose value is an integer.
use sluice_sdk::{Ctx, PStateDef, Result};

const NAMES: PStateDef<String, String> = PStateDef::new("names");

fn bump(ctx: &Ctx, account: String) -> Result<()> {
    ctx.pstate(NAMES).increment(&account, 1)
}

fn main() {
    let _ = bump;
}
