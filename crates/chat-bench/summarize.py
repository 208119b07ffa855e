#!/usr/bin/env python3
"""Medians of run-budget.sh's JSON lines, one line per backend and mode, for the results table
in docs/benchmarks.md.

  python3 crates/chat-bench/summarize.py /tmp/chat-bench-results
"""

import glob
import json
import os
import statistics
import sys


def get(d, path):
    for key in path.split("."):
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


FIELDS = {
    "throughput": ["delivered_per_sec", "persisted_per_sec", "confirm_latency.p50_ms", "confirm_latency.p99_ms",
                   "server_cpu_percent", "client_cpu_percent"],
    "latency": ["latency.p50_ms", "latency.p90_ms", "latency.p99_ms", "latency.p999_ms", "latency.max_ms",
                "latency_from_write.p99_ms", "server_cpu_percent", "client_cpu_percent"],
    "connections": ["connected", "connects_per_sec", "connect_latency.p99_ms", "server_kib_per_connection",
                    "server_kib_per_connection_after_idle", "server_idle_cpu_percent", "pings_per_sec",
                    "server_cpu_us_per_ping", "server_rss_connected_kib"],
    "history": ["history_latency.p50_ms", "history_latency.p99_ms", "history_latency.p999_ms",
                "history_latency.max_ms", "history_latency_from_write.p99_ms", "send_latency.p99_ms",
                "history_bytes_mean", "seed_per_sec", "server_cpu_percent"],
}
CHECKS = ["lost", "duplicated", "out_of_order"]


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "/tmp/chat-bench-results"
    for path in sorted(glob.glob(os.path.join(folder, "*.jsonl"))):
        runs = []
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    runs.append(json.loads(line))
        if not runs:
            continue
        mode = runs[0].get("mode")
        name = os.path.basename(path)[: -len(".jsonl")]
        ok = all(r.get("ok") for r in runs)
        bad = {k: sum(r.get(k) or 0 for r in runs) for k in CHECKS}
        print(f"{name}: {len(runs)} runs, all ok: {ok}, " + ", ".join(f"{k} {v}" for k, v in bad.items()))
        for field in FIELDS.get(mode, []):
            values = [get(r, field) for r in runs]
            values = [v for v in values if isinstance(v, (int, float))]
            if values:
                shown = ", ".join(f"{v:g}" for v in values)
                print(f"    {field:40} median {statistics.median(values):>10g}   ({shown})")


if __name__ == "__main__":
    main()
