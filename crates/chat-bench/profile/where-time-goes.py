#!/usr/bin/env python3
"""Sorts the CPU samples of a `perf record -g` profile of chat-server into a few buckets, so
docs/benchmarks.md can say where the time goes.

  perf record -F 499 -g --call-graph dwarf,16384 -p SERVER_PID -o perf.data -- sleep 8
  perf script -i perf.data | python3 crates/chat-bench/profile/where-time-goes.py

Each sample goes to the first bucket (in the order below) that one of its frames matches;
a sample matching none is "other". Prints percentages of all samples.
"""

import re
import sys
from collections import Counter

# (bucket, regex over one frame's symbol). First match in this order wins.
BUCKETS = [
    ("store: WAL checkpoint", r"walCheckpoint|sqlite3WalCheckpoint"),
    ("store: COMMIT (write WAL / fsync)", r"sqlite3PagerCommitPhaseOne|sqlite3VdbeHalt|CommitPhaseTwo"),
    ("store: dedupe SELECT, re-prepare", r"sqlite3Reprepare"),
    ("store: dedupe SELECT, run", r"RunQueryDsl::get_result"),
    ("store: INSERT rows", r"InsertStatement|insert_with_default_for_sqlite|batch_insert"),
    ("store: append, other (room lock, UPDATE last_seq)", r"chat_store::sqlite::append_batch|chat_store::postgres::.*append_batch"),
    ("store: history", r"chat_store::\w+::\w*history|::history::"),
    ("store: rooms_of / open_room / other store calls", r"chat_store::"),
    ("postgres client (diesel-async / tokio-postgres)", r"tokio_postgres|diesel_async::pg|postgres_protocol"),
    ("registry fan-out", r"chat_server::registry"),
    ("websocket connection task", r"chat_server::ws::|actix_ws"),
    ("HTTP / actix I/O", r"actix_http|actix_server|actix_web|actix_codec"),
    ("JSON (serde_json)", r"serde_json"),
    ("tokio scheduler / timers", r"tokio::runtime"),
]
COMPILED = [(name, re.compile(rx)) for name, rx in BUCKETS]


def samples(stream):
    frames = []
    for line in stream:
        line = line.rstrip("\n")
        if not line.strip():
            if frames:
                yield frames
            frames = []
            continue
        if line[0] not in " \t":
            continue  # the sample's header line
        parts = line.strip().split(" ", 1)
        if len(parts) == 2:
            frames.append(parts[1])
    if frames:
        yield frames


def main():
    counts = Counter()
    total = 0
    for frames in samples(sys.stdin):
        total += 1
        bucket = "other"
        for name, rx in COMPILED:
            if any(rx.search(f) for f in frames):
                bucket = name
                break
        counts[bucket] += 1
    if not total:
        print("no samples")
        return
    print(f"{total} samples")
    for name, n in counts.most_common():
        print(f"{100.0 * n / total:6.1f}%  {name}")


if __name__ == "__main__":
    main()
