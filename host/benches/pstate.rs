//! PState benchmark: select latency in-process and over HTTP (a key lookup, a 100-element
//! `sorted-range` from a subindexed map of 1,000,000 elements, `count` of that map) and the
//! write throughput of a nested transform, each against raw redb doing the same reads/writes on
//! the same data in the same run. Run with `make bench`; prints a Markdown table.

#[allow(dead_code)]
#[path = "../../tests/e2e/harness.rs"]
mod harness;

#[allow(dead_code)]
#[path = "common/goals.rs"]
mod goals;

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{module_wasm, Conn, Host};
use redb::{Database, Durability, ReadableDatabase, ReadableTableMetadata, TableDefinition};
use sluice::pstate::{self, Catalog, Navigator, PStateStore, Range, Schema, Session, TransformOp};
use sluice::value::Value;

/// The allocator the `sluice` binary runs with, so the in-process figures are the host's (and
/// raw redb, in the same process, gets it too). Under glibc's malloc the key lookup varied
/// 1.3–4× between runs with the heap left by the 1M-write setup (`malloc_consolidate`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BIG: usize = 1_000_000;
const KEYS: usize = 10_000;
const BATCH: usize = 10_000;
const SAMPLES: usize = 5_000;
const PARTITIONS: u32 = 8;
const KV_SCHEMA: &str = "map<string, subindexed map<int, string>>";

fn t(s: &str) -> Value {
    Value::Text(s.into())
}
fn i(n: i64) -> Value {
    Value::Integer(n.into())
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn stats(mut us: Vec<f64>) -> (f64, f64) {
    us.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (us[us.len() / 2], us[(us.len() - 1) * 99 / 100])
}

fn time_us(mut f: impl FnMut(usize)) -> (f64, f64) {
    let mut out = Vec::with_capacity(SAMPLES);
    for n in 0..SAMPLES {
        let s = Instant::now();
        f(n);
        out.push(s.elapsed().as_secs_f64() * 1e6);
    }
    stats(out)
}

fn range_path(start: i64) -> Vec<Navigator> {
    vec![
        Navigator::Key(t("big")),
        Navigator::SortedRange(Range {
            start: Some(i(start)),
            start_inclusive: true,
            limit: Some(100),
            ..Range::default()
        }),
    ]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let host = Host::start(&data, &[]);
    let r = host.deploy(
        "kv",
        &module_wasm("kv"),
        &format!("?partitions={PARTITIONS}"),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    drop(host); // the files are populated directly below, with the host stopped

    let mut catalog = Catalog::default();
    catalog
        .schemas
        .insert("kv".into(), Schema::parse(KV_SCHEMA).unwrap());
    let catalog = Arc::new(catalog);
    let stores: Vec<Arc<PStateStore>> = (0..PARTITIONS)
        .map(|p| {
            Arc::new(PStateStore::open(&data.join(format!("modules/kv/p{p}/pstate.redb"))).unwrap())
        })
        .collect();
    let owner = |k: &str| pstate::partition_of_key(&t(k), PARTITIONS).unwrap() as usize;

    // Nested-transform write throughput: kv["big"][n] = "v<n>", 10k per commit.
    let big_p = owner("big");
    let mut session = Session::new(
        Arc::clone(&stores[big_p]),
        Arc::clone(&catalog),
        big_p as u32,
        PARTITIONS,
        10_000,
    );
    let start = Instant::now();
    for n in 0..BIG {
        let path = [Navigator::Key(t("big")), Navigator::Key(i(n as i64))];
        session
            .transform("kv", &path, &TransformOp::Set(t(&format!("v{n}"))))
            .unwrap();
        session.end_record(true);
        if (n + 1) % BATCH == 0 {
            stores[big_p]
                .commit_writes(&session.take_writes(), false)
                .unwrap();
        }
    }
    stores[big_p]
        .commit_writes(&session.take_writes(), true)
        .unwrap();
    let transform_rate = BIG as f64 / start.elapsed().as_secs_f64();
    // Small entries for key lookups: kv["k<n>"][0] = "x".
    let mut sessions: Vec<Session> = (0..PARTITIONS)
        .map(|p| {
            Session::new(
                Arc::clone(&stores[p as usize]),
                Arc::clone(&catalog),
                p,
                PARTITIONS,
                10_000,
            )
        })
        .collect();
    for n in 0..KEYS {
        let k = format!("k{n}");
        let path = [Navigator::Key(t(&k)), Navigator::Key(i(0))];
        let s = &mut sessions[owner(&k)];
        s.transform("kv", &path, &TransformOp::Set(t("x"))).unwrap();
        s.end_record(true);
    }
    for (p, s) in sessions.iter_mut().enumerate() {
        stores[p].commit_writes(&s.take_writes(), true).unwrap();
    }
    drop(sessions);
    drop(session);

    // Raw redb baseline on the same disk: the same 1M writes, same batch size and durability.
    const RAW_MAIN: TableDefinition<&[u8], &[u8]> = TableDefinition::new("raw");
    let raw = Database::create(dir.path().join("raw.redb")).unwrap();
    let start = Instant::now();
    for chunk in 0..BIG / BATCH {
        let mut txn = raw.begin_write().unwrap();
        let last = chunk == BIG / BATCH - 1;
        txn.set_durability(if last {
            Durability::Immediate
        } else {
            Durability::None
        })
        .unwrap();
        {
            let mut tb = txn.open_table(RAW_MAIN).unwrap();
            for n in chunk * BATCH..(chunk + 1) * BATCH {
                let k = pstate::key::encode(&i(n as i64)).unwrap();
                tb.insert(k.as_slice(), format!("v{n}").as_bytes()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let raw_rate = BIG as f64 / start.elapsed().as_secs_f64();
    const RAW_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
    {
        let txn = raw.begin_write().unwrap();
        {
            let mut tb = txn.open_table(RAW_KEYS).unwrap();
            for n in 0..KEYS {
                tb.insert(format!("k{n}").as_str(), b"x".as_slice())
                    .unwrap();
            }
        }
        txn.commit().unwrap();
    }

    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    // In-process selects (each opens a snapshot, like an HTTP select does).
    let key_sel = time_us(|_| {
        let k = format!("k{}", rng.below(KEYS as u64));
        let v = pstate::select_committed(
            &stores[owner(&k)],
            &catalog,
            "kv",
            &[Navigator::Key(t(&k)), Navigator::Key(i(0))],
            100,
        )
        .unwrap();
        assert_eq!(v.len(), 1);
    });
    let range_sel = time_us(|_| {
        let start = rng.below((BIG - 100) as u64) as i64;
        let v = pstate::select_committed(&stores[big_p], &catalog, "kv", &range_path(start), 100)
            .unwrap();
        let Value::Map(m) = &v[0] else { panic!() };
        assert_eq!(m.len(), 100);
    });
    let count_sel = time_us(|_| {
        let v = pstate::select_committed(
            &stores[big_p],
            &catalog,
            "kv",
            &[Navigator::Key(t("big")), Navigator::Count],
            100,
        )
        .unwrap();
        assert_eq!(v, vec![i(BIG as i64)]);
    });
    // Raw redb: the same reads.
    let raw_key = time_us(|_| {
        let k = format!("k{}", rng.below(KEYS as u64));
        let txn = raw.begin_read().unwrap();
        let tb = txn.open_table(RAW_KEYS).unwrap();
        assert!(tb.get(k.as_str()).unwrap().is_some());
    });
    let raw_range = time_us(|_| {
        let start = pstate::key::encode(&i(rng.below((BIG - 100) as u64) as i64)).unwrap();
        let txn = raw.begin_read().unwrap();
        let tb = txn.open_table(RAW_MAIN).unwrap();
        let v: Vec<Vec<u8>> = tb
            .range(start.as_slice()..)
            .unwrap()
            .take(100)
            .map(|e| e.unwrap().1.value().to_vec())
            .collect();
        assert_eq!(v.len(), 100);
    });
    let raw_count = time_us(|_| {
        let txn = raw.begin_read().unwrap();
        let tb = txn.open_table(RAW_MAIN).unwrap();
        assert_eq!(tb.len().unwrap(), BIG as u64);
    });
    drop(stores);

    // Over HTTP, against the real host on the same files.
    let host = Host::start(&data, &[]);
    let mut conn = Conn::open(&host.addr);
    let mut http = |body: String| {
        let r = conn.request(
            "POST",
            "/v1/modules/kv/pstates/kv/select",
            "application/json",
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    };
    let http_key = time_us(|_| {
        http(format!(
            "{{\"path\":[{{\"key\":\"k{}\"}},{{\"key\":0}}]}}",
            rng.below(KEYS as u64)
        ))
    });
    let http_range = time_us(|_| {
        http(format!(
            "{{\"path\":[{{\"key\":\"big\"}},{{\"sorted-range\":{{\"start\":{},\"limit\":100}}}}]}}",
            rng.below((BIG - 100) as u64)
        ))
    });
    let http_count = time_us(|_| http("{\"path\":[{\"key\":\"big\"},\"count\"]}".to_string()));
    std::thread::sleep(Duration::from_millis(10));

    println!("## PState selects and nested transforms vs raw redb (same run)\n");
    println!("{SAMPLES} samples per select; data: PState `kv` = `{KV_SCHEMA}` with one key holding {BIG} elements and {KEYS} small keys over {PARTITIONS} partitions.\n");
    println!("| operation | Sluice in-process p50 / p99 µs | Sluice HTTP p50 / p99 µs | raw redb p50 / p99 µs | in-process ÷ raw (p50) |");
    println!("|---|---|---|---|---|");
    for (name, a, h, b) in [
        (
            "key lookup (`[key k, key 0]`; raw: one `get`)",
            key_sel,
            http_key,
            raw_key,
        ),
        (
            "`sorted-range` of 100 from the 1M subindexed map (raw: 100-entry range scan)",
            range_sel,
            http_range,
            raw_range,
        ),
        (
            "`count` of the 1M subindexed map (raw: table `len`)",
            count_sel,
            http_count,
            raw_count,
        ),
    ] {
        println!(
            "| {name} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.2} |",
            a.0,
            a.1,
            h.0,
            h.1,
            b.0,
            b.1,
            a.0 / b.0
        );
    }
    goals::record(
        "in-process key select ≤ 2× a raw redb read",
        &format!("{:.1} µs p50", key_sel.0),
        &format!("raw redb point read: {:.1} µs", raw_key.0),
        key_sel.0,
        raw_key.0,
        goals::Target::RatioAtMost(2.0),
    );
    println!(
        "\nNested transform `kv[\"big\"][n] = \"v<n>\"` through the session/engine, {BATCH} per commit: {transform_rate:.0} writes/s; raw redb inserts of the same 1M pairs, same batches and durability: {raw_rate:.0} writes/s; ratio {:.2}.",
        transform_rate / raw_rate
    );
}
