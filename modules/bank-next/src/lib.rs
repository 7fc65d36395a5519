//! A new build of the `bank` module, for update tests: the bank's own code
//! (`bank/src/ledger.rs`, included as is) plus a query `accounts` (how many accounts hold
//! money).

#[path = "../../bank/src/ledger.rs"]
mod ledger;

use sluice_sdk::{Definition, Module, Path, QueryCtx, Result};

struct BankNext;

impl Module for BankNext {
    fn define(m: &mut Definition) {
        ledger::define(m);
        m.query("accounts", accounts);
    }
}

fn accounts(q: &QueryCtx, _: ledger::NoArgs) -> Result<usize> {
    let balances = q
        .pstate("accounts")
        .select_all::<i64>(&Path::new().map_vals().then_key("balance"))?;
    Ok(balances.into_iter().flatten().filter(|b| *b > 0).count())
}

sluice_sdk::export_module!(BankNext);
