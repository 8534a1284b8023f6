#!/usr/bin/env python3
"""A writer for the capture tests, using Python's own SQLite (not the one strata links).

    workload.py init DB STATES
    workload.py write DB STATES --seconds S --seed N [--orphans 1]
    workload.py orphan DB
    workload.py page-size DB SIZE
    workload.py checkpoint DB MODE
    workload.py hash DB
    workload.py read DB STATES --seconds S

`read` reads a follower's database in read transactions for S seconds (waiting for it to
appear): each must be a state in STATES (re-read as it grows). It prints how many it read
and exits 1 naming a state the source never had.

`write` runs random transactions: small inserts, updates and deletes, multi-page and large
transactions, and now and then a VACUUM or the application's own wal_checkpoint(RESTART) or
(TRUNCATE). Inside each write transaction, before COMMIT, it hashes the whole content and
appends the hash to STATES: the exact states the database passed through. Several writers
may run at once (they take turns on the write lock).

`--orphans 1` (and `orphan`) also leaves what a writer killed between writing its WAL
frames and publishing them in the wal-index leaves: valid, checksummed frames with a
commit mark past the wal-index's mxFrame, which SQLite never committed and the next writer
overwrites. Their page is garbage, so a replica that ships them restores a state the
source never had (or a malformed database).
"""

import hashlib
import os
import random
import sqlite3
import struct
import sys
import time


def connect(db):
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def begin_immediate(conn):
    """BEGIN IMMEDIATE, polling every millisecond for up to a minute.

    SQLite's busy handler sleeps in steps growing to 100 ms and its locks are not fair: two
    writers that each hold the write lock most of the time (every transaction hashes the
    whole database) can starve the one that sleeps for its whole timeout, which is a flaw of
    this workload, not of what it tests. Polling finds the gaps between the other writer's
    transactions, as strata's own lock does.
    """
    conn.execute("PRAGMA busy_timeout=0")
    started = time.time()
    try:
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.time() - started > 60:
                    raise
                time.sleep(0.001)
    finally:
        conn.execute("PRAGMA busy_timeout=30000")
    waited = time.time() - started
    if waited > 10:
        print(f"workload.py: waited {waited:.1f} s for the write lock", file=sys.stderr, flush=True)


def content_hash(conn):
    h = hashlib.sha256()
    for table in ("items", "blobs"):
        for row in conn.execute(f"SELECT * FROM {table} ORDER BY 1"):
            h.update(repr(row).encode())
    return h.hexdigest()


def record(states, digest):
    with open(states, "a") as f:
        f.write(digest + "\n")


def init(db, states, page_size=None):
    conn = connect(db)
    if page_size:
        conn.execute(f"PRAGMA page_size={int(page_size)}")
    conn.execute("PRAGMA journal_mode=WAL")
    begin_immediate(conn)
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


def wal_checksum(big_endian, s0, s1, data):
    fmt = ">" if big_endian else "<"
    words = struct.unpack(f"{fmt}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def orphan_frames(conn, db, rng):
    """Appends uncommitted-but-valid frames after mxFrame, holding the write lock as the
    killed writer did, then lets go without touching the wal-index."""
    begin_immediate(conn)
    try:
        # The first read of the transaction brings the connection's view up to date.
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        with open(db + "-shm", "rb") as f:
            hdr = f.read(48)
        mx_frame = struct.unpack_from("=I", hdr, 16)[0]
        s0, s1 = struct.unpack_from("=II", hdr, 24)
        salts = hdr[32:40]
        page_size = struct.unpack_from("=H", hdr, 14)[0]
        page_size = 65536 if page_size == 1 else page_size
        if mx_frame == 0:
            return
        with open(db + "-wal", "r+b") as w:
            magic = struct.unpack(">I", w.read(4))[0]
            big_endian = magic & 1
            offset = 32 + mx_frame * (24 + page_size)
            frames = b""
            # Some pages, then a commit frame for page 1: garbage there makes any restore
            # of a state that includes these frames fail outright.
            for pgno in [rng.randint(2, max(2, pages)) for _ in range(rng.randint(0, 2))] + [1]:
                commit = pages if pgno == 1 else 0
                page = os.urandom(page_size)
                head = struct.pack(">II", pgno, commit)
                s0, s1 = wal_checksum(big_endian, s0, s1, head)
                s0, s1 = wal_checksum(big_endian, s0, s1, page)
                frames += head + salts + struct.pack(">II", s0, s1) + page
            w.seek(offset)
            w.write(frames)
            w.flush()
            os.fsync(w.fileno())
    finally:
        conn.execute("ROLLBACK")


def write(db, states, seconds, seed, orphans=False):
    rng = random.Random(seed)
    conn = connect(db)
    deadline = time.time() + seconds
    while time.time() < deadline:
        roll = rng.random()
        if roll < 0.01:
            conn.execute("VACUUM")
            begin_immediate(conn)
            record(states, content_hash(conn))
            conn.execute("COMMIT")
        elif roll < 0.03:
            mode = rng.choice(["RESTART", "TRUNCATE", "PASSIVE"])
            conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
        elif orphans and roll < 0.08:
            orphan_frames(conn, db, rng)
        else:
            begin_immediate(conn)
            transaction(conn, rng)
            record(states, content_hash(conn))
            conn.execute("COMMIT")
        time.sleep(rng.random() * 0.02)
    if orphans:
        # A last real commit overwrites any orphan frames: left in place, SQLite's recovery
        # would take them as committed once every connection has closed (a killed writer's
        # frames are then durable), and these hold garbage no real writer would.
        begin_immediate(conn)
        transaction(conn, rng)
        record(states, content_hash(conn))
        conn.execute("COMMIT")


def read(db, states, seconds):
    deadline = time.time() + seconds
    while not os.path.exists(db) and time.time() < deadline:
        time.sleep(0.05)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30, isolation_level=None)
    known, reads, distinct = set(), 0, set()
    while time.time() < deadline:
        conn.execute("BEGIN")
        try:
            digest = content_hash(conn)
        except sqlite3.OperationalError as e:
            # The schema appears with the first file applied.
            conn.execute("ROLLBACK")
            if "no such table" in str(e):
                time.sleep(0.01)
                continue
            raise
        conn.execute("COMMIT")
        if digest not in known:
            with open(states) as f:
                known = set(line.strip() for line in f)
        if digest not in known:
            print(f"read a state the source never had: {digest}", flush=True)
            sys.exit(1)
        reads += 1
        distinct.add(digest)
        time.sleep(0.005)
    print(f"{reads} reads, {len(distinct)} distinct states", flush=True)


def main():
    cmd, db = sys.argv[1], sys.argv[2]
    if cmd == "init":
        init(db, sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
    elif cmd == "page-size":
        # Rebuild the database with another page size (it must not be in use).
        conn = connect(db)
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute(f"PRAGMA page_size={int(sys.argv[3])}")
        conn.execute("VACUUM")
        conn.execute("PRAGMA journal_mode=WAL")
    elif cmd == "checkpoint":
        connect(db).execute(f"PRAGMA wal_checkpoint({sys.argv[3]})").fetchall()
    elif cmd == "write":
        args = dict(zip(sys.argv[4::2], sys.argv[5::2]))
        write(db, sys.argv[3], float(args["--seconds"]), int(args["--seed"]), args.get("--orphans") == "1")
    elif cmd == "orphan":
        orphan_frames(connect(db), db, random.Random())
    elif cmd == "read":
        args = dict(zip(sys.argv[4::2], sys.argv[5::2]))
        read(db, sys.argv[3], float(args["--seconds"]))
    elif cmd == "hash":
        print(content_hash(connect(db)))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
