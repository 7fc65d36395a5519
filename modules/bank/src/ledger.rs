//! The bank's logic: its declarations, handlers and query (shared with the `bank-next`
//! update fixture, which adds to it).

use serde::{Deserialize, Serialize};
use sluice_sdk::{
    Any, Ctx, Definition, Depot, Hop, HopTarget, PStateDef, Partitioner, Path, QueryCtx, Result,
    Schema, Subindexed,
};

#[derive(Deserialize)]
struct Deposit {
    account: String,
    amount: i64,
}

#[derive(Deserialize, Serialize)]
struct Transfer {
    id: String,
    from: String,
    to: String,
    amount: i64,
}

/// An account; handlers reach its fields by path, so the history is never read whole.
#[derive(Deserialize, Serialize, Schema)]
struct Account {
    balance: i64,
    /// [`Entry`]s, stored unchecked.
    history: Subindexed<Vec<Any>>,
}

#[derive(Serialize)]
struct Entry<'a> {
    kind: &'a str,
    id: Option<&'a str>,
    amount: i64,
    reason: Option<&'a str>,
}

impl<'a> Entry<'a> {
    fn of(kind: &'a str, t: &'a Transfer) -> Self {
        Entry {
            kind,
            id: Some(&t.id),
            amount: t.amount,
            reason: None,
        }
    }
}

const DEPOSITS: Depot<Deposit> = Depot::new("deposits");
const TRANSFERS: Depot<Transfer> = Depot::new("transfers");
const ACCOUNTS: PStateDef<String, Account> = PStateDef::new("accounts");
const CREDIT: Hop<Transfer> = Hop::new("credit");

/// Declares the bank's depots, PState, microbatch topology and query.
pub fn define(m: &mut Definition) {
    m.depot(DEPOSITS, Partitioner::hash("account"));
    m.depot(TRANSFERS, Partitioner::hash("from"));
    m.pstate_of(ACCOUNTS);
    m.microbatch_topology("bank")
        .on(DEPOSITS, deposit)
        .on(TRANSFERS, transfer)
        .hop_handler(CREDIT, credit);
    m.query("total-balance", total_balance);
}

/// The arguments of a query that takes none (`{}`).
#[derive(Deserialize)]
pub struct NoArgs {}

fn total_balance(q: &QueryCtx, _: NoArgs) -> Result<i64> {
    let balances = q
        .pstate(ACCOUNTS)
        .select_all::<i64>(&Path::new().map_vals().then_key("balance"))?;
    Ok(balances.into_iter().flatten().sum())
}

/// Adds `amount` to the balance of `account` and records `entry` in its history.
fn book(ctx: &Ctx, account: &str, amount: i64, entry: &Entry) -> Result<()> {
    let accounts = ctx.pstate(ACCOUNTS);
    accounts.increment_at(&accounts.path(account).then_key("balance"), amount)?;
    accounts.push_at(&accounts.path(account).then_key("history"), entry)
}

fn deposit(ctx: &Ctx, d: Deposit) -> Result<()> {
    let e = Entry {
        kind: "deposit",
        id: None,
        amount: d.amount,
        reason: None,
    };
    book(ctx, &d.account, d.amount, &e)
}

fn transfer(ctx: &Ctx, t: Transfer) -> Result<()> {
    let accounts = ctx.pstate(ACCOUNTS);
    let from = accounts.path(&t.from);
    let balance: i64 = accounts
        .get_at(&from.clone().then_key("balance"))?
        .unwrap_or(0);
    let refused = if t.amount <= 0 {
        Some("non-positive amount")
    } else {
        (balance < t.amount).then_some("overdraft")
    };
    if let Some(reason) = refused {
        let e = Entry {
            reason: Some(reason),
            ..Entry::of("refused", &t)
        };
        return accounts.push_at(&from.then_key("history"), &e);
    }
    book(ctx, &t.from, -t.amount, &Entry::of("debit", &t))?;
    ctx.hop(HopTarget::Key(&t.to), CREDIT, &t)
}

fn credit(ctx: &Ctx, t: Transfer) -> Result<()> {
    book(ctx, &t.to, t.amount, &Entry::of("credit", &t))
}
