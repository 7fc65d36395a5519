// A hop carries its handler's payload type, at the sending end and at the handling end.
use sluice_sdk::{Ctx, Definition, Hop, HopTarget, Result};

const COUNT_WORD: Hop<String> = Hop::new("count-word");

fn split(ctx: &Ctx, n: i64) -> Result<()> {
    ctx.hop(HopTarget::Key(&n), COUNT_WORD, &n)
}

fn count_number(_: &Ctx, _: i64) -> Result<()> {
    Ok(())
}

fn define(m: &mut Definition) {
    m.stream_topology("sentences")
        .hop_handler(COUNT_WORD, count_number);
}

fn main() {
    let _ = (split, define);
}
