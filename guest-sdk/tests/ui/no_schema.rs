// A PState's types need a schema: `Option` has none outside a record field.
use sluice_sdk::{Definition, PStateDef};

const MAYBE: PStateDef<String, Option<i64>> = PStateDef::new("maybe");

fn define(m: &mut Definition) {
    m.pstate_of(MAYBE);
}

fn main() {
    let _ = define;
}
