#!/usr/bin/env python3
"""What SQLite does alone, for comparison with chat-bench: the same schema (the project's
migration), the same settings (WAL, synchronous=FULL, foreign_keys) and the same statements
per group commit as chat-store's SQLite append_batch, from one writer, as the server runs.

  append:   python3 sqlite-alone.py append  --db /tmp/x/alone.db --rooms 500 --batch 128 --secs 10
  history:  python3 sqlite-alone.py history --db /tmp/x/alone.db --rooms 500 --secs 10

`append` runs transactions back to back: BEGIN IMMEDIATE; SELECT the batch's rooms; one
dedupe SELECT per message; one multi-row INSERT; one UPDATE of last_seq per room; COMMIT.
A batch of B messages goes to min(B, rooms) consecutive rooms, round-robin (so a batch of
128 over 500 rooms is one message per room). `history` reads the latest 300 messages of a
random room (membership check, then the page) back to back and prints p50/p99. Prints one
JSON line. Python adds a few microseconds per statement that Rust does not pay.
"""

import argparse
import glob
import json
import os
import random
import sqlite3
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MIGRATION = sorted(glob.glob(os.path.join(HERE, "..", "..", "..", "migrations", "sqlite", "*", "up.sql")))


def connect(path):
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.executescript("PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; "
                     "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
    return db


def setup(db, rooms):
    have = db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'rooms'").fetchone()[0]
    if not have:
        for path in MIGRATION:
            with open(path) as f:
                db.executescript(f.read())
    exists = db.execute("SELECT count(*) FROM rooms WHERE id LIKE 'pgb-%'").fetchone()[0]
    if exists < rooms:
        db.execute("BEGIN")
        db.executemany(
            "INSERT OR IGNORE INTO rooms (id, member_a, member_b, created_at) VALUES (?, ?, ?, 0)",
            [(f"pgb-{i}", f"pgb-{i}-a", f"pgb-{i}-b") for i in range(1, rooms + 1)])
        db.execute("COMMIT")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None


def append(db, rooms, batch, secs, body):
    run = f"{os.getpid()}-{int(time.time())}"
    per_batch_rooms = min(batch, rooms)
    n, commits, lat = 0, 0, []
    end = time.monotonic() + secs
    while time.monotonic() < end:
        start = random.randint(0, rooms - per_batch_rooms)
        ids = [f"pgb-{start + 1 + k}" for k in range(per_batch_rooms)]
        msgs = [(ids[k % per_batch_rooms], f"c{run}-{commits}-{k}") for k in range(batch)]
        t0 = time.monotonic()
        db.execute("BEGIN IMMEDIATE")
        marks = ",".join("?" * len(ids))
        locked = {r[0]: r[1] for r in db.execute(
            f"SELECT id, last_seq, member_a, member_b, closed_at FROM rooms WHERE id IN ({marks})", ids)}
        for room, cid in msgs:
            db.execute("SELECT seq FROM messages WHERE room_id = ? AND sender_id = ? AND client_msg_id = ? LIMIT 1",
                       (room, room + "-a", cid)).fetchall()
        rows = []
        for room, cid in msgs:
            locked[room] += 1
            rows.append((room, locked[room], room + "-a", cid, body, 1790000000000000))
        values = ",".join(["(?, ?, ?, ?, ?, ?, NULL)"] * len(rows))
        flat = [v for r in rows for v in r]
        db.execute("INSERT INTO messages (room_id, seq, sender_id, client_msg_id, body, sent_at, seen_at) "
                   f"VALUES {values}", flat)
        for room in ids:
            db.execute("UPDATE rooms SET last_seq = ? WHERE id = ?", (locked[room], room))
        db.execute("COMMIT")
        lat.append(time.monotonic() - t0)
        commits += 1
        n += batch
    elapsed = secs
    return {"mode": "sqlite-append", "batch": batch, "rooms": rooms, "secs": elapsed,
            "commits_per_sec": round(commits / elapsed, 1), "messages_per_sec": round(n / elapsed, 1),
            "commit_p50_ms": round(pct(lat, 0.5) * 1000, 3), "commit_p99_ms": round(pct(lat, 0.99) * 1000, 3)}


def history(db, rooms, secs):
    lat = []
    end = time.monotonic() + secs
    while time.monotonic() < end:
        room = f"pgb-{random.randint(1, rooms)}"
        t0 = time.monotonic()
        db.execute("BEGIN")
        db.execute("SELECT member_a, member_b, closed_at FROM rooms WHERE id = ?", (room,)).fetchall()
        rows = db.execute("SELECT room_id, seq, sender_id, client_msg_id, body, sent_at, seen_at FROM messages "
                          "WHERE room_id = ? ORDER BY seq DESC LIMIT 300", (room,)).fetchall()
        db.execute("COMMIT")
        lat.append(time.monotonic() - t0)
    return {"mode": "sqlite-history", "rooms": rooms, "reads": len(lat), "rows_last": len(rows),
            "p50_ms": round(pct(lat, 0.5) * 1000, 3), "p99_ms": round(pct(lat, 0.99) * 1000, 3),
            "max_ms": round(max(lat) * 1000, 3)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["append", "history"])
    p.add_argument("--db", required=True)
    p.add_argument("--rooms", type=int, default=500)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--secs", type=float, default=10)
    p.add_argument("--body-len", type=int, default=64)
    p.add_argument("--cache-kib", type=int, default=0, help="PRAGMA cache_size in KiB (0: SQLite's default, as the server)")
    p.add_argument("--pragma", action="append", default=[], help="extra PRAGMA to try, e.g. wal_autocheckpoint=0")
    a = p.parse_args()
    os.makedirs(os.path.dirname(os.path.abspath(a.db)), exist_ok=True)
    db = connect(a.db)
    if a.cache_kib:
        db.execute(f"PRAGMA cache_size = -{a.cache_kib}")
    for pragma in a.pragma:
        db.execute(f"PRAGMA {pragma}")
    setup(db, a.rooms)
    body = ("matchchat bench " * 20)[:a.body_len]
    out = append(db, a.rooms, a.batch, a.secs, body) if a.mode == "append" else history(db, a.rooms, a.secs)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
