//! Misbehaving guests: the host stops them with a clear error, rolls their writes back, keeps
//! serving other modules, and loses nothing committed.

use serde_json::json;

use crate::harness::{module_wasm, Host};

#[test]
fn runaway_guests_are_stopped_and_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(
        &dir.path().join("data"),
        &[
            "--call-deadline-ms",
            "200",
            "--instance-memory-mb",
            "16",
            "--handler-attempts-max",
            "2",
        ],
    );
    let r = host.deploy("hostile", &module_wasm("hostile"), "?partitions=4");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    host.deploy_ok("wc", "wordcount", "");

    let ok = host.append("hostile", "commands", &json!({"key": "k", "do": "ok"}));
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    // A guest that prints more than the host keeps never traps for it (issue 12 item 7).
    for _ in 0..3 {
        let p = host.append(
            "hostile",
            "commands",
            &json!({"key": "printer", "do": "print"}),
        );
        assert_eq!(p.status, 200, "{}", String::from_utf8_lossy(&p.body));
    }

    let cases = [
        ("loop", "deadline-exceeded"),
        ("membomb", "memory-limit"),
        ("trap", "trap"),
        ("panic", "trap"),
        ("stack", "trap"),
        ("error", "guest-error"),
        ("wrong-partition", "guest-error"),
        ("bad-type", "guest-error"),
        // Refused at the `hop` call: the guest sees the error and returns it.
        ("hop-unknown", "guest-error"),
        ("hop-fail", "trap"),
    ];
    for (action, guest_error) in cases {
        let r = host.append("hostile", "commands", &json!({"key": "k", "do": action}));
        assert_eq!(
            r.status,
            500,
            "{action}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let e = r.json()["error"].clone();
        assert_eq!(e["code"], "topology-failed", "{action}");
        assert_eq!(e["guest_error"], guest_error, "{action}: {e}");
        assert_eq!(e["topology"], "run");
        // Another module keeps serving while this one misbehaves.
        let w = host.append("wc", "words", &json!({"word": action}));
        assert_eq!(w.status, 200);
    }
    let msg = |action: &str| -> String {
        let dl = host
            .get("/v1/modules/hostile/topologies/run/dead-letters")
            .json();
        dl["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["record"]["do"] == action)
            .map(|d| d["error"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert!(
        msg("panic").contains("hostile module panicked on purpose"),
        "{}",
        msg("panic")
    );
    assert!(
        msg("wrong-partition").contains("belongs to partition"),
        "{}",
        msg("wrong-partition")
    );
    assert!(
        msg("bad-type").contains("expected int, found string"),
        "{}",
        msg("bad-type")
    );
    assert!(msg("loop").contains("call_deadline_ms"));
    assert!(
        msg("hop-unknown").contains("unknown-hop-handler: hop to handler `nonexistent`"),
        "{}",
        msg("hop-unknown")
    );

    let dl = host
        .get("/v1/modules/hostile/topologies/run/dead-letters")
        .json();
    let dead = dl["dead_letters"].as_array().unwrap();
    // One per failed record, plus one per partition for the exploding hop handler.
    assert_eq!(dead.len(), cases.len() - 1 + 4);
    // Transient failures (traps, deadline, memory) get every attempt; permanent ones (the
    // guest's own error, a hop to an undeclared handler) are dead-lettered at once.
    for d in dead {
        let permanent =
            ["guest-error", "unknown-hop-handler"].contains(&d["code"].as_str().unwrap());
        assert_eq!(d["attempts"], if permanent { 1 } else { 2 }, "{d}");
    }
    let exploded: Vec<_> = dead
        .iter()
        .filter(|d| d["depot"].as_str().unwrap().starts_with("hop:explode"))
        .collect();
    assert_eq!(exploded.len(), 4, "{dl}");
    assert!(exploded[0]["error"]
        .as_str()
        .unwrap()
        .contains("hop handler exploded for k"));

    // Every failed handler's increment was rolled back: only the `ok` records count, and
    // `hop-fail`, whose own handler succeeded (its hops then failed on their partitions).
    let ok2 = host.append("hostile", "commands", &json!({"key": "k", "do": "ok"}));
    assert_eq!(ok2.status, 200);
    assert_eq!(
        host.select("hostile", "seen", json!([{"key": "k"}])),
        vec![json!(3)]
    );
    assert_eq!(
        host.depot_records("hostile", "commands"),
        2 + 3 + cases.len() as u64
    );
    assert_eq!(
        host.select("wc", "counts", json!([{"key": "loop"}])),
        vec![json!(1)]
    );

    // After a restart the dead letters are not replayed and the state is the same.
    let host = host.kill9_and_restart();
    assert_eq!(
        host.select("hostile", "seen", json!([{"key": "k"}])),
        vec![json!(3)]
    );
}

#[test]
fn a_full_partition_queue_answers_503_and_drops_nothing_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(
        &dir.path().join("data"),
        &[
            "--call-deadline-ms",
            "300",
            "--handler-attempts-max",
            "2",
            "--partition-queue-depth",
            "2",
            "--batch-records-max",
            "1",
        ],
    );
    host.deploy_ok("hostile", "hostile", "?partitions=2");
    std::thread::scope(|s| {
        // Occupies the key's partition for about 2 x 300 ms.
        let blocker =
            s.spawn(|| host.append("hostile", "commands", &json!({"key": "q", "do": "loop"})));
        std::thread::sleep(std::time::Duration::from_millis(150));
        let mut accepted = 0;
        let mut refused = None;
        for _ in 0..20 {
            let r = host.request(
                "POST",
                "/v1/modules/hostile/depots/commands/append?ack=none",
                "application/json",
                br#"{"key": "q", "do": "ok"}"#,
            );
            match r.status {
                202 => accepted += 1,
                503 => {
                    refused = Some(r);
                    break;
                }
                other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
            }
        }
        let refused = refused.expect("the bounded queue must fill up");
        assert_eq!(refused.error_code(), "queue-full");
        assert_eq!(refused.header("retry-after"), Some("1"));
        assert!((1..=3).contains(&accepted), "accepted {accepted}");
        assert_eq!(blocker.join().unwrap().status, 500);
        // Every accepted `none`-ack record is processed; the refused one is not stored.
        let mut seen = Vec::new();
        for _ in 0..200 {
            seen = host.select("hostile", "seen", json!([{"key": "q"}]));
            if seen == vec![json!(accepted)] {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(seen, vec![json!(accepted)]);
        assert_eq!(host.depot_records("hostile", "commands"), 1 + accepted);
    });
}

#[test]
fn dead_letters_replay_after_the_cause_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &["--handler-attempts-max", "1"]);
    host.deploy_ok("hostile", "hostile", "?partitions=2");
    let r = host.append(
        "hostile",
        "commands",
        &json!({"key": "z", "do": "needs-three"}),
    );
    assert_eq!(r.status, 500);
    let replay = |host: &Host| {
        let r = host.request(
            "POST",
            "/v1/modules/hostile/topologies/run/dead-letters/replay",
            "application/json",
            b"",
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    };
    assert_eq!(replay(&host), json!({"replayed": 0, "still_failing": 1}));
    for _ in 0..2 {
        assert_eq!(
            host.append("hostile", "commands", &json!({"key": "z", "do": "ok"}))
                .status,
            200
        );
    }
    assert_eq!(replay(&host), json!({"replayed": 1, "still_failing": 0}));
    assert_eq!(
        host.select("hostile", "seen", json!([{"key": "z"}])),
        vec![json!(3)]
    );
    let dl = host
        .get("/v1/modules/hostile/topologies/run/dead-letters")
        .json();
    assert_eq!(dl["dead_letters"], json!([]));
}

#[test]
fn hostile_modules_at_deploy_and_garbage_through_every_import() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(
        &dir.path().join("data"),
        &["--call-deadline-ms", "1000", "--handler-attempts-max", "1"],
    );
    let r = host.deploy("define-loop", &module_wasm("define_loop"), "");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (422, "define-failed"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["error"]["guest_error"], "deadline-exceeded");
    let compiles = || host.metric_sum("sluice_component_compiles_total");
    let before = compiles();
    let r = host.deploy("http", &module_wasm("forbidden_http"), "");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "forbidden-import")
    );
    assert!(
        r.json()["error"]["imports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i.as_str().unwrap().starts_with("wasi:http/")),
        "{}",
        r.json()
    );
    assert_eq!(
        compiles(),
        before,
        "forbidden imports are found without compiling"
    );
    let r = host.deploy("old", &module_wasm("old_contract"), "");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "contract-version")
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sluice:module/types@0.1.0"),
        "{}",
        r.json()
    );
    assert_eq!(
        host.get("/v1/modules").json(),
        json!({"modules": []}),
        "nothing of a refused deploy is kept"
    );
    // Nor its compiled code: only components that pass every check are cached (imports are
    // checked in the binary, before compiling; the contract version after).
    let cached = |wasm: &str| {
        use sha2::Digest;
        let digest: String = sha2::Sha256::digest(module_wasm(wasm))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::read_dir(dir.path().join("data/cache"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().starts_with(&digest))
            })
            .unwrap_or(false)
    };
    for refused in ["define_loop", "forbidden_http", "old_contract"] {
        assert!(!cached(refused), "{refused} was cached");
    }

    host.deploy_ok("garbage", "garbage_imports", "?partitions=2");
    assert!(cached("garbage_imports"), "a deployed component is cached");
    let r = host.append("garbage", "go", &json!({"key": "g"}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["results"]["garbage"],
        json!([
            "invalid-value",
            "unknown-pstate",
            "ok",
            "path-too-long",
            "invalid-value",
            "invalid-value",
            "ok",
            "invalid-path",
            "invalid-path",
            "invalid-path",
            "partition-out-of-range",
            "invalid-value",
            "invalid-value",
            "partition-not-local",
            "partition-out-of-range",
            "invalid-value"
        ])
    );
    assert_eq!(
        host.select("garbage", "counts", json!([{"key": "g"}])),
        vec![json!(i64::MAX)]
    );

    host.deploy_ok("hostile", "hostile", "?partitions=2");
    let r = host.append(
        "hostile",
        "commands",
        &json!({"key": "h", "do": "huge-ack"}),
    );
    assert_eq!(
        (r.status, r.json()["error"]["guest_error"].as_str()),
        (500, Some("ack-too-large"))
    );
    let r = host.append(
        "hostile",
        "commands",
        &json!({"key": "h", "do": "huge-error"}),
    );
    assert_eq!(r.status, 500);
    assert!(
        r.body.len() < 10_000,
        "a guest's huge error message is clipped: {} bytes",
        r.body.len()
    );
    assert_eq!(
        host.append("hostile", "commands", &json!({"key": "h", "do": "ok"}))
            .status,
        200
    );
    assert_eq!(
        host.select("hostile", "seen", json!([{"key": "h"}])),
        vec![json!(1)]
    );
}

/// `wasi:filesystem` and `wasi:sockets` are linked without authority (SECURITY.md): modules
/// importing them deploy, and a read of a file that exists, or a connect to a port that
/// listens, fails inside the guest — no byte read, no connection made.
#[test]
fn filesystem_and_socket_imports_carry_no_authority() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &[]);
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "the host's secret").unwrap();
    host.deploy_ok("fs", "forbidden", "?partitions=1");
    for path in [secret.to_str().unwrap(), "/etc/passwd", "secret.txt", "."] {
        let r = host.append("fs", "paths", &json!({ "path": path }));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let answer = r.json()["results"]["read"].as_str().unwrap().to_string();
        assert!(answer.starts_with("error: "), "{path}: {answer}");
    }

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    host.deploy_ok("net", "forbidden_net", "?partitions=1");
    for target in [addr.as_str(), "localhost:80", "[::1]:22"] {
        let r = host.append("net", "targets", &json!({ "addr": target }));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let answer = r.json()["results"]["connect"].as_str().unwrap().to_string();
        assert!(answer.starts_with("error: "), "{target}: {answer}");
    }
    assert_eq!(
        listener.accept().map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::WouldBlock),
        "the guest's connect reached the listener"
    );
}

/// A memory cap too small for a component to instantiate is named in the deploy's error,
/// with what the component needs; nothing is kept.
#[test]
fn a_memory_cap_too_small_to_instantiate_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("data"), &["--instance-memory-mb", "1"]);
    let r = host.deploy("wc", &module_wasm("wordcount"), "");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (422, "define-failed"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("instance memory limit of 1.00 MiB (1048576 bytes)")
            && message.contains("--instance-memory-mb")
            && message.contains("needs 1.06 MiB"),
        "{message}"
    );
    assert_eq!(host.get("/v1/modules").json(), json!({"modules": []}));
}
