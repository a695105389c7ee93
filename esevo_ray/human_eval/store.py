"""Durable storage of human evaluation sessions, turns, votes and ratings (SQLite, WAL).

Every turn, vote and rating is committed as it happens (synchronous=FULL), so stopping
the application mid-session loses nothing a rater did, and a session can be resumed.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY, mode TEXT NOT NULL, rater TEXT NOT NULL,
    model_a TEXT NOT NULL, model_b TEXT, min_turns INTEGER NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS turns (
    session_id TEXT NOT NULL, turn_index INTEGER NOT NULL, user_text TEXT NOT NULL,
    model_a TEXT NOT NULL, reply_a TEXT NOT NULL, model_b TEXT, reply_b TEXT,
    crisis INTEGER NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (session_id, turn_index)
);
CREATE TABLE IF NOT EXISTS votes (
    session_id TEXT NOT NULL, turn_index INTEGER NOT NULL, model_a TEXT NOT NULL,
    model_b TEXT NOT NULL, choice TEXT NOT NULL, continue_with TEXT NOT NULL,
    created_at REAL NOT NULL, PRIMARY KEY (session_id, turn_index)
);
CREATE TABLE IF NOT EXISTS ratings (
    session_id TEXT NOT NULL, model TEXT NOT NULL, dimension TEXT NOT NULL,
    score INTEGER NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (session_id, dimension)
);
"""


def connect(path: str | Path, readonly: bool = False) -> sqlite3.Connection:
    """A connection with WAL journaling and full sync; rows come back as `sqlite3.Row`."""
    path = Path(path)
    if readonly:
        if not path.exists():
            raise FileNotFoundError(f"human evaluation database not found: {path}")
        # A URI, percent-encoded: a '#', '?' or '%' in the path stays part of the path.
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SCHEMA)
    conn.row_factory = sqlite3.Row
    return conn


class HumanEvalStore:
    """Thread-safe writes; each method is one committed transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.conn = connect(self.path)
        self.lock = threading.Lock()

    def _write(self, sql: str, args: tuple) -> None:
        with self.lock:
            self.conn.execute(sql, args)

    def _read(self, sql: str, args: tuple = ()) -> list[dict]:
        with self.lock:
            return [dict(r) for r in self.conn.execute(sql, args).fetchall()]

    def add_session(
        self, sid: str, mode: str, rater: str, model_a: str, model_b: str | None, min_turns: int
    ) -> None:
        self._write(
            "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)",
            (sid, mode, rater, model_a, model_b, min_turns, time.time()),
        )

    def session(self, sid: str) -> dict | None:
        rows = self._read("SELECT * FROM sessions WHERE session_id = ?", (sid,))
        return rows[0] if rows else None

    def add_turn(
        self,
        sid: str,
        index: int,
        user_text: str,
        model_a: str,
        reply_a: str,
        model_b: str | None,
        reply_b: str | None,
        crisis: bool,
    ) -> None:
        self._write(
            "INSERT INTO turns VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sid, index, user_text, model_a, reply_a, model_b, reply_b, int(crisis), time.time()),
        )

    def turns(self, sid: str) -> list[dict]:
        return self._read(
            "SELECT t.*, v.choice, v.continue_with FROM turns t LEFT JOIN votes v "
            "ON t.session_id = v.session_id AND t.turn_index = v.turn_index "
            "WHERE t.session_id = ? ORDER BY t.turn_index",
            (sid,),
        )

    def add_vote(
        self, sid: str, index: int, model_a: str, model_b: str, choice: str, continue_with: str
    ) -> None:
        self._write(
            "INSERT INTO votes VALUES (?, ?, ?, ?, ?, ?, ?)",
            (sid, index, model_a, model_b, choice, continue_with, time.time()),
        )

    def add_ratings(self, sid: str, model: str, scores: dict[str, int]) -> None:
        now = time.time()
        with self.lock:
            self.conn.execute("BEGIN")
            try:
                for dim, score in scores.items():
                    self.conn.execute(
                        "INSERT INTO ratings VALUES (?, ?, ?, ?, ?)", (sid, model, dim, score, now)
                    )
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise

    def rated(self, sid: str) -> bool:
        return bool(self._read("SELECT 1 FROM ratings WHERE session_id = ? LIMIT 1", (sid,)))

    def assignments(self, mode: str) -> dict[str, int]:
        """Sessions per model so far in `mode` (to balance the blinded draw)."""
        counts: dict[str, int] = {}
        for row in self._read("SELECT model_a, model_b FROM sessions WHERE mode = ?", (mode,)):
            for m in (row["model_a"], row["model_b"]):
                if m:
                    counts[m] = counts.get(m, 0) + 1
        return counts

    def pair_assignments(self) -> dict[tuple[str, str], int]:
        """Pair-wise sessions per pair of models (its names sorted) so far."""
        counts: dict[tuple[str, str], int] = {}
        rows = self._read("SELECT model_a, model_b FROM sessions WHERE mode = 'pairwise'", ())
        for row in rows:
            pair = tuple(sorted((row["model_a"], row["model_b"])))
            counts[pair] = counts.get(pair, 0) + 1
        return counts

    def close(self) -> None:
        with self.lock:
            self.conn.close()
