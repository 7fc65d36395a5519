//! The bank's logic: its declarations, handlers and query (shared with the `bank-next`
//! update fixture, which adds to it).

use serde::{Deserialize, Serialize};
use sluice_sdk::{Ctx, Definition, HopTarget, Partitioner, Path, QueryCtx, Result, Schema};

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

#[derive(Serialize)]
struct Entry<'a> {
    kind: &'a str,
    id: Option<&'a str>,
    amount: i64,
    reason: Option<&'a str>,
}

/// Declares the bank's depots, PState, microbatch topology and query.
pub fn define(m: &mut Definition) {
    m.depot("deposits", Partitioner::hash("account"));
    m.depot("transfers", Partitioner::hash("from"));
    m.pstate(
        "accounts",
        Schema::map(
            Schema::string(),
            Schema::record(&[
                ("balance", Schema::int()),
                ("history", Schema::list(Schema::any()).subindexed()),
            ]),
        ),
    );
    m.microbatch_topology("bank")
        .reads("deposits")
        .reads("transfers")
        .handler(apply)
        .hop_handler("credit", credit);
    m.query("total-balance", total_balance);
}

/// The arguments of a query that takes none (`{}`).
#[derive(Deserialize)]
pub struct NoArgs {}

fn total_balance(q: &QueryCtx, _: NoArgs) -> Result<i64> {
    let balances = q
        .pstate("accounts")
        .select_all::<i64>(&Path::new().map_vals().then_key("balance"))?;
    Ok(balances.into_iter().flatten().sum())
}

/// Records of both depots arrive here; a transfer has an `id`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Record {
    Transfer(Transfer),
    Deposit(Deposit),
}

fn apply(ctx: &Ctx, r: Record) -> Result<()> {
    let accounts = ctx.pstate("accounts");
    match r {
        Record::Deposit(d) => {
            accounts.increment(&Path::key(&d.account).then_key("balance"), d.amount)?;
            let e = Entry {
                kind: "deposit",
                id: None,
                amount: d.amount,
                reason: None,
            };
            accounts.push(&Path::key(&d.account).then_key("history"), &e)
        }
        Record::Transfer(t) => {
            let balance: i64 = accounts
                .get(&Path::key(&t.from).then_key("balance"))?
                .unwrap_or(0);
            let history = Path::key(&t.from).then_key("history");
            if t.amount <= 0 || balance < t.amount {
                let reason = if t.amount <= 0 {
                    "non-positive amount"
                } else {
                    "overdraft"
                };
                let e = Entry {
                    kind: "refused",
                    id: Some(&t.id),
                    amount: t.amount,
                    reason: Some(reason),
                };
                return accounts.push(&history, &e);
            }
            accounts.increment(&Path::key(&t.from).then_key("balance"), -t.amount)?;
            let e = Entry {
                kind: "debit",
                id: Some(&t.id),
                amount: t.amount,
                reason: None,
            };
            accounts.push(&history, &e)?;
            ctx.hop(HopTarget::Key(&t.to), "credit", &t)
        }
    }
}

fn credit(ctx: &Ctx, t: Transfer) -> Result<()> {
    let accounts = ctx.pstate("accounts");
    accounts.increment(&Path::key(&t.to).then_key("balance"), t.amount)?;
    let e = Entry {
        kind: "credit",
        id: Some(&t.id),
        amount: t.amount,
        reason: None,
    };
    accounts.push(&Path::key(&t.to).then_key("history"), &e)
}
