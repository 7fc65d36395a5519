#!/usr/bin/env python3
"""Renders the goal rows one `make bench` run recorded (target/bench-goals.jsonl, written by
host/benches/common/goals.rs) as the Markdown table at the top of BENCHMARKS.md."""
import json
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "target/bench-goals.jsonl"
rows = [json.loads(line) for line in open(path) if line.strip()]
print("| goal | figure | baseline (same run) | ratio | status | bench |")
print("|---|---|---|---|---|---|")
for r in rows:
    ratio = "—" if r["ratio"] is None else f'{r["ratio"]:.2f}'
    status = {True: "met", False: "not met", None: "reported"}[r["met"]]
    print(f'| {r["goal"]} | {r["figure"]} | {r["baseline"] or "—"} | {ratio} | {status} | `{r["bench"]}` |')
