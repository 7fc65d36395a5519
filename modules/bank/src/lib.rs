//! A bank, applied exactly once by a microbatch topology.
//!
//! - Depot `deposits` (`{"account": "alice", "amount": 100}`, hash by `account`).
//! - Depot `transfers` (`{"id": "t1", "from": "alice", "to": "bob", "amount": 30}`, hash by
//!   `from`).
//! - PState `accounts`: account → `{balance, history}`, the history a subindexed list of
//!   `{"kind": "deposit" | "debit" | "credit" | "refused", ...}` entries.
//! - Microbatch topology `bank`: a deposit credits its account; a transfer debits `from` on its
//!   partition (or records a refusal if the balance is short), then hops to `to`'s partition to
//!   credit it. Every batch commits atomically on all partitions: money is conserved exactly,
//!   and no transfer is applied twice, whatever crashes.
//! - Query `total-balance` (`{}`): the sum of every account's balance over all partitions,
//!   which must always equal the sum of deposits (a live invariant check).

mod ledger;

use sluice_sdk::{Definition, Module};

struct Bank;

impl Module for Bank {
    fn define(m: &mut Definition) {
        ledger::define(m);
    }
}

sluice_sdk::export_module!(Bank);
