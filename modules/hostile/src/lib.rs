//! A misbehaving module for tests. Depot `commands` (hash by `key`) carries records like
//! `{"key": "k", "do": "ok"}`; the handler first increments `seen[key]`, then does what `do`
//! says: `ok`, `print` (200 KB to stdout/stderr, then ok), `loop` (forever), `membomb` (allocate without bound), `trap` (wasm `unreachable`),
//! `panic`, `error` (return an error), `stack` (unbounded recursion), `wrong-partition`
//! (write a key owned by another partition), `bad-type` (write a string into an int PState),
//! `hop-fail` (hop to every partition into a handler that panics), `hop-unknown` (hop to an
//! undeclared handler).
//! Every failure must roll the increment back.
//!
//! Query `misbehave` (`{"do": ...}`): `ok` answers the sum of `seen` over all partitions,
//! `write` tries a transform (refused: queries are read-only), `loop`, `panic`, `membomb`.

use serde::Deserialize;
use sluice_sdk::{
    AckReturn, Ctx, Definition, Error, HopTarget, Module, Partitioner, Path, QueryCtx, Result,
    Schema,
};

#[derive(Deserialize)]
struct Misbehave {
    #[serde(rename = "do")]
    action: String,
}

fn misbehave(q: &QueryCtx, m: Misbehave) -> Result<i64> {
    let seen = q.pstate("seen");
    match m.action.as_str() {
        "write" => {
            seen.increment(&Path::key("q"), 1)?;
            Ok(-1)
        }
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "panic" => panic!("hostile query panicked on purpose"),
        "membomb" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        _ => Ok(seen
            .select_all::<i64>(&Path::new().map_vals())?
            .into_iter()
            .flatten()
            .sum()),
    }
}

#[derive(Deserialize)]
struct Command {
    key: String,
    #[serde(rename = "do")]
    action: String,
}

struct Hostile;

impl Module for Hostile {
    fn define(m: &mut Definition) {
        m.depot("commands", Partitioner::hash("key"));
        m.pstate("seen", Schema::map(Schema::string(), Schema::int()));
        m.stream_topology("run")
            .reads("commands")
            .handler(run)
            .hop_handler("explode", explode);
        m.query("misbehave", misbehave);
    }
}

#[inline(never)]
fn recurse(n: u64) -> u64 {
    if n == u64::MAX {
        return 0;
    }
    let local = [n; 64];
    std::hint::black_box(&local);
    recurse(n + 1) + local[3]
}

fn run(ctx: &Ctx, cmd: Command) -> Result<AckReturn<Option<String>>> {
    if cmd.action == "huge-ack" {
        // Ack-return values travel in the HTTP answer: 2 MiB is refused by the host.
        return Ok(AckReturn(Some("y".repeat(2 << 20))));
    }
    run_command(ctx, cmd).map(|()| AckReturn(None))
}

fn run_command(ctx: &Ctx, cmd: Command) -> Result<()> {
    let seen = ctx.pstate("seen");
    seen.increment(&Path::key(&cmd.key), 1)?;
    match cmd.action.as_str() {
        "ok" => Ok(()),
        "print" => {
            // 200 KB to stdout and stderr: more than the host keeps; it must not trap.
            for i in 0..1_000 {
                println!("{i}: {}", "x".repeat(100));
                eprintln!("{i}: {}", "y".repeat(100));
            }
            Ok(())
        }
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "membomb" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "trap" => {
            #[cfg(target_arch = "wasm32")]
            core::arch::wasm32::unreachable();
            #[cfg(not(target_arch = "wasm32"))]
            unreachable!()
        }
        "panic" => panic!("hostile module panicked on purpose"),
        "error" => Err(Error::new("refused", "hostile module refused the record")),
        "stack" => {
            let n = recurse(0);
            Err(Error::new("unreachable", format!("recursion returned {n}")))
        }
        "wrong-partition" => {
            // Among these keys some belong to other partitions: the host refuses the write.
            for i in 0..64 {
                seen.increment(&Path::key(&format!("{}-{i}", cmd.key)), 1)?;
            }
            Ok(())
        }
        "bad-type" => seen.set(&Path::key(&cmd.key), "not a number"),
        "huge-error" => Err(Error::new("huge", "y".repeat(8 << 20))),
        "needs-three" => match seen.get::<i64>(&Path::key(&cmd.key))? {
            Some(n) if n >= 3 => Ok(()),
            n => Err(Error::new(
                "not-yet",
                format!("seen[{}] is {n:?}, needs 3", cmd.key),
            )),
        },
        "hop-fail" => ctx.hop(HopTarget::<str>::All, "explode", &cmd.key),
        "hop-unknown" => ctx.hop(HopTarget::<str>::All, "nonexistent", &cmd.key),
        other => Err(Error::new(
            "unknown-command",
            format!("unknown command `{other}`"),
        )),
    }
}

fn explode(_ctx: &Ctx, key: String) -> Result<()> {
    panic!("hop handler exploded for {key}")
}

sluice_sdk::export_module!(Hostile);
