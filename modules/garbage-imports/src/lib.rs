//! A module that calls every host import with garbage (bad CBOR, unknown names, out-of-range
//! partitions, oversized paths and log lines) straight through the raw bindings. Each call must
//! come back as an error value — never a trap, never a host crash. The handler returns the
//! error codes it got as its ack-return value.

use serde::Deserialize;
use sluice_sdk::bindings::sluice::module::host;
use sluice_sdk::bindings::sluice::module::types::{
    KeyRange, LogLevel, Navigator, Target, TransformOp,
};
use sluice_sdk::{AckReturn, Ctx, Definition, Module, Partitioner, Result, Schema};

#[derive(Deserialize)]
struct Go {
    key: String,
}

struct Garbage;

impl Module for Garbage {
    fn define(m: &mut Definition) {
        m.depot("go", Partitioner::hash("key"));
        m.pstate("counts", Schema::map(Schema::string(), Schema::int()));
        m.stream_topology("garbage")
            .reads("go")
            .handler(go)
            .hop_handler("h", |_c: &Ctx, _p: i64| Ok(()));
    }
}

fn code<T>(
    r: std::result::Result<T, sluice_sdk::bindings::sluice::module::types::Error>,
) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.code,
    }
}

fn go(_ctx: &Ctx, g: Go) -> Result<AckReturn<Vec<String>>> {
    let bad_cbor = vec![0xff, 0x00, 0x13];
    let mut key = Vec::new();
    // The CBOR text string `g.key`, by hand (no serde here: the point is raw bytes).
    key.push(0x60 | g.key.len() as u8);
    key.extend_from_slice(g.key.as_bytes());
    let codes = vec![
        code(host::select("counts", &[Navigator::Key(bad_cbor.clone())])),
        code(host::select("nope", &[Navigator::Key(key.clone())])),
        code(host::select("counts", &[])),
        code(host::select("counts", &vec![Navigator::All; 100_000])),
        code(host::select(
            "counts",
            &[
                Navigator::Key(key.clone()),
                Navigator::SortedRange(KeyRange {
                    start: Some(bad_cbor.clone()),
                    end: None,
                    start_inclusive: true,
                    end_inclusive: false,
                    limit: Some(u64::MAX),
                    reverse: false,
                }),
            ],
        )),
        code(host::transform(
            "counts",
            &[Navigator::Key(key.clone())],
            &TransformOp::Set(bad_cbor.clone()),
        )),
        code(host::transform(
            "counts",
            &[Navigator::Key(key.clone())],
            &TransformOp::Increment(i64::MAX),
        )),
        code(host::transform(
            "counts",
            &[Navigator::Key(key.clone())],
            &TransformOp::Increment(1),
        )),
        code(host::transform(
            "counts",
            &[Navigator::Key(key.clone())],
            &TransformOp::Increment(i64::MAX),
        )),
        code(host::transform(
            "counts",
            &[Navigator::Count],
            &TransformOp::Remove,
        )),
        code(host::hop(&Target::Partition(9_999), "h", &[0x01])),
        code(host::hop(&Target::Key(bad_cbor.clone()), "h", &[0x01])),
        code(host::hop(&Target::All, "h", &bad_cbor)),
        code(host::select_from("counts", &Target::All, &[Navigator::Key(key.clone())]).map(|_| ())),
        code(host::select_from("counts", &Target::Partition(9_999), &[]).map(|_| ())),
        code(host::select_from("counts", &Target::Key(bad_cbor.clone()), &[]).map(|_| ())),
    ];
    host::log(LogLevel::Info, &"x".repeat(1 << 20));
    Ok(AckReturn(codes))
}

sluice_sdk::export_module!(Garbage);
