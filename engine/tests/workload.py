#!/usr/bin/env python3
"""A writer for the capture tests, using Python's own SQLite (not the one strata links).

    workload.py init DB STATES
    workload.py write DB STATES --seconds S --seed N
    workload.py hash DB

`write` runs random transactions: small inserts, updates and deletes, multi-page and large
transactions, and now and then a VACUUM or the application's own wal_checkpoint(RESTART) or
(TRUNCATE). Inside each write transaction, before COMMIT, it hashes the whole content and
appends the hash to STATES: the exact states the database passed through. Several writers
may run at once (they take turns on the write lock).
"""

import hashlib
import random
import sqlite3
import sys
import time


def connect(db):
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def content_hash(conn):
    h = hashlib.sha256()
    for table in ("items", "blobs"):
        for row in conn.execute(f"SELECT * FROM {table} ORDER BY 1"):
            h.update(repr(row).encode())
    return h.hexdigest()


def record(states, digest):
    with open(states, "a") as f:
        f.write(digest + "\n")


def init(db, states):
    conn = connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, n INTEGER)")
    conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)")
    conn.executemany("INSERT INTO items (name, n) VALUES (?, ?)", [(f"item-{i}", i) for i in range(2000)])
    record(states, content_hash(conn))
    conn.execute("COMMIT")


def transaction(conn, rng):
    kind = rng.random()
    if kind < 0.45:
        conn.execute("INSERT INTO items (name, n) VALUES (?, ?)", (f"w-{rng.random()}", rng.randint(0, 10**6)))
    elif kind < 0.75:
        conn.execute("UPDATE items SET n = n + 1, name = name || 'u' WHERE id % 97 = ?", (rng.randint(0, 96),))
    elif kind < 0.85:
        conn.execute("DELETE FROM items WHERE id IN (SELECT id FROM items ORDER BY random() LIMIT ?)", (rng.randint(1, 20),))
    elif kind < 0.97:
        # Multi-page: a few kilobytes to a hundred kilobytes of blobs.
        for _ in range(rng.randint(1, 25)):
            conn.execute("INSERT INTO blobs (data) VALUES (randomblob(?))", (rng.randint(500, 6000),))
    else:
        # Large: megabytes in one transaction, then most of it deleted again.
        conn.execute("INSERT INTO blobs (data) SELECT randomblob(3000) FROM items LIMIT 600")
        conn.execute("DELETE FROM blobs WHERE id % 3 != 0")


def write(db, states, seconds, seed):
    rng = random.Random(seed)
    conn = connect(db)
    deadline = time.time() + seconds
    while time.time() < deadline:
        roll = rng.random()
        if roll < 0.01:
            conn.execute("VACUUM")
            conn.execute("BEGIN IMMEDIATE")
            record(states, content_hash(conn))
            conn.execute("COMMIT")
        elif roll < 0.03:
            mode = rng.choice(["RESTART", "TRUNCATE", "PASSIVE"])
            conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
        else:
            conn.execute("BEGIN IMMEDIATE")
            transaction(conn, rng)
            record(states, content_hash(conn))
            conn.execute("COMMIT")
        time.sleep(rng.random() * 0.02)


def main():
    cmd, db = sys.argv[1], sys.argv[2]
    if cmd == "init":
        init(db, sys.argv[3])
    elif cmd == "write":
        args = dict(zip(sys.argv[4::2], sys.argv[5::2]))
        write(db, sys.argv[3], float(args["--seconds"]), int(args["--seed"]))
    elif cmd == "hash":
        print(content_hash(connect(db)))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
