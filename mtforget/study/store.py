"""The results store: one SQLite file per study directory.

Trial states (pending, running, done, failed with a reason) and result rows live in the same
database, written in transactions, so a killed study never leaves a trial half-recorded: its rows
and its ``done`` state land together or not at all.
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
import sys
import time
from pathlib import Path

from mtforget.atomic import atomic_path
from mtforget.errors import UsageError
from mtforget.mitigations import MITIGATIONS
from mtforget.study.selection import selected_trials


def warn(message: str) -> None:
    """A warning for the user of a run, on stderr whatever logging is set up."""
    sys.stderr.write(f"warning: {message}\n")

SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    trial_id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    reason TEXT,
    model TEXT NOT NULL,
    method TEXT NOT NULL,
    mitigations TEXT NOT NULL DEFAULT '{}',
    condition TEXT,
    finetune_size INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    config TEXT NOT NULL,
    grid_values TEXT NOT NULL,
    info TEXT,
    started_at REAL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS results (
    trial_id TEXT NOT NULL REFERENCES trials(trial_id),
    src TEXT NOT NULL,
    tgt TEXT NOT NULL,
    category TEXT NOT NULL,
    exposure TEXT,
    metric TEXT NOT NULL,
    base REAL,
    finetuned REAL,
    delta REAL,
    delta_low REAL,
    delta_high REAL,
    source_copy REAL,
    base_flag TEXT,
    PRIMARY KEY (trial_id, src, tgt, metric)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Folder of a study directory where the current run records bases that failed (to build, load or
# evaluate), so that the other trials of such a base fail at once with the same reason; emptied
# when a run starts, so that a later run tries every base again.
BASE_FAILURES = "base_failures"

# Each registered mitigation has a column (its label, ``none`` when off) after the method. Beside
# the data size, the optimizer steps and tokens the trial trained for (size is not budget: a fixed
# ``finetune.steps`` repeats a small set). ``lr_selected``: whether the headline reads the trial
# (see mtforget.study.selection; every done trial when the study selects nothing).
CSV_COLUMNS = ["trial_id", "model", "method", *MITIGATIONS, "finetune_size", "steps", "tokens", "seed",
               "src", "tgt", "category", "exposure", "metric", "base", "finetuned", "delta",
               "delta_low", "delta_high", "source_copy", "base_flag", "lr_selected"]


class StoreUnusable(Exception):
    """``results.sqlite`` is damaged or is not mtforget's store."""


class ResultStore:
    """Read and write a study's ``results.sqlite``; with ``readonly``, only read it (nothing is
    migrated or created, and the study directory may be read-only)."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        try:
            self.db = _connect_readonly(path) if readonly else sqlite3.connect(path, timeout=60)
            _check_store(self.db)
        except sqlite3.Error as exc:
            raise StoreUnusable(f"{path}: {exc}") from None
        self.db.row_factory = sqlite3.Row
        if readonly:
            self.columns = {r["name"] for r in self.db.execute("PRAGMA table_info(results)")}
            return
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        # Stores written before the interval, copy-baseline and base-gate columns existed gain them.
        have = {r["name"] for r in self.db.execute("PRAGMA table_info(results)")}
        for column, kind in (("delta_low", "REAL"), ("delta_high", "REAL"), ("source_copy", "REAL"),
                             ("base_flag", "TEXT"), ("exposure", "TEXT")):
            if column not in have:
                self.db.execute(f"ALTER TABLE results ADD COLUMN {column} {kind}")
        # Stores written when alignment was the one mitigation with a column gain the general ones
        # (filled in when the trials are registered again, as every run does).
        have = {r["name"] for r in self.db.execute("PRAGMA table_info(trials)")}
        if "mitigations" not in have:
            self.db.execute("ALTER TABLE trials ADD COLUMN mitigations TEXT NOT NULL DEFAULT '{}'")
            self.db.execute("ALTER TABLE trials ADD COLUMN condition TEXT")
        if "alignment" in have:
            self.db.execute("ALTER TABLE trials DROP COLUMN alignment")
        self.columns = {r["name"] for r in self.db.execute("PRAGMA table_info(results)")}

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    def register(self, trial_id: str, model: str, method: str, mitigations: dict[str, str], condition: str,
                 finetune_size: int, seed: int, config: dict, grid_values: dict) -> None:
        """Add a trial as pending unless it is already known (its state is then kept, its labels
        refreshed). ``mitigations``: each registered mitigation's label; ``condition``: the
        trial's condition label."""
        with self.db:
            self.db.execute(
                "INSERT INTO trials (trial_id, status, model, method, mitigations, condition, finetune_size,"
                " seed, config, grid_values) VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (trial_id) DO UPDATE SET mitigations = excluded.mitigations,"
                " condition = excluded.condition",
                (trial_id, model, method, json.dumps(mitigations), condition, finetune_size, seed,
                 json.dumps(config), json.dumps(grid_values)),
            )

    def keep_only(self, trial_ids: set[str]) -> list[str]:
        """Drop the trials (and their rows) that are not in ``trial_ids``; returns the dropped ids.

        A study changed since its last run keeps its directory: trials of the old config must not
        mix into the new one's tables. Their ``trials/<id>/result.json`` stay on disk, so a
        trial that comes back is recovered from it, not recomputed.
        """
        known = [r["trial_id"] for r in self.db.execute("SELECT trial_id FROM trials")]
        dropped = [t for t in known if t not in trial_ids]
        with self.db:
            self.db.executemany("DELETE FROM results WHERE trial_id = ?", [(t,) for t in dropped])
            self.db.executemany("DELETE FROM trials WHERE trial_id = ?", [(t,) for t in dropped])
        return dropped

    def status(self, trial_id: str) -> str | None:
        """The trial's state, or None if unknown."""
        row = self.db.execute("SELECT status FROM trials WHERE trial_id = ?", (trial_id,)).fetchone()
        return row["status"] if row else None

    def reason(self, trial_id: str) -> str | None:
        """Why the trial failed, if it did."""
        row = self.db.execute("SELECT reason FROM trials WHERE trial_id = ?", (trial_id,)).fetchone()
        return row["reason"] if row else None

    def mark_running(self, trial_id: str) -> None:
        """A trial started (again): its old rows, if any, are dropped."""
        with self.db:
            self.db.execute("DELETE FROM results WHERE trial_id = ?", (trial_id,))
            self.db.execute("UPDATE trials SET status='running', reason=NULL, started_at=?, finished_at=NULL"
                            " WHERE trial_id = ?", (time.time(), trial_id))

    def mark_failed(self, trial_id: str, reason: str) -> None:
        """Record a failure and its reason."""
        with self.db:
            self.db.execute("UPDATE trials SET status='failed', reason=?, finished_at=? WHERE trial_id = ?",
                            (reason, time.time(), trial_id))

    def finish(self, trial_id: str, rows: list[dict], info: dict) -> None:
        """Store the trial's rows and mark it done, in one transaction."""
        with self.db:
            self.db.execute("DELETE FROM results WHERE trial_id = ?", (trial_id,))
            self.db.executemany(
                "INSERT INTO results (trial_id, src, tgt, category, exposure, metric, base, finetuned, delta,"
                " delta_low, delta_high, source_copy, base_flag) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(trial_id, r["src"], r["tgt"], r["category"], r.get("exposure"), r["metric"], r["base"],
                  r["finetuned"], r["delta"], r.get("delta_low"), r.get("delta_high"), r.get("source_copy"),
                  r.get("base_flag") or "") for r in rows],
            )
            self.db.execute("UPDATE trials SET status='done', info=?, finished_at=? WHERE trial_id = ?",
                            (json.dumps(info), time.time(), trial_id))

    def set_meta(self, values: dict[str, object]) -> None:
        """Record study-level facts (versions, metric signatures, hardware)."""
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in values.items()])

    def meta(self) -> dict[str, object]:
        """Study-level facts."""
        return {r["key"]: json.loads(r["value"]) for r in self.db.execute("SELECT key, value FROM meta")}

    def trials(self) -> list[dict]:
        """Every trial with its state, in registration order."""
        rows = self.db.execute("SELECT * FROM trials ORDER BY rowid").fetchall()
        return [dict(r) for r in rows]

    def rows(self, select: dict[str, str] | None = None) -> list[dict]:
        """Result rows of done trials joined with their conditions (the ``results.csv`` table);
        ``select``: the study's ``select``, which decides ``lr_selected``."""
        trials = self.trials()
        chosen = selected_trials(trials, select or {})
        budget = {}
        for t in trials:
            train = (json.loads(t["info"]).get("train") or {}) if t["info"] else {}
            budget[t["trial_id"]] = (train.get("steps"), train.get("tokens"))
        # A store of an earlier version read without migrating it lacks the later columns.
        later = ", ".join(f"r.{c}" if c in self.columns else f"NULL AS {c}"
                          for c in ("delta_low", "delta_high", "source_copy"))
        flag = "COALESCE(r.base_flag, '')" if "base_flag" in self.columns else "''"
        exposure = "r.exposure" if "exposure" in self.columns else "NULL"
        cur = self.db.execute(
            "SELECT r.trial_id, t.model, t.method, t.mitigations, t.finetune_size, t.seed, r.src, r.tgt,"
            f" r.category, {exposure} AS exposure, r.metric, r.base, r.finetuned, r.delta, {later},"
            f" {flag} AS base_flag FROM results r JOIN trials t"
            " USING (trial_id) WHERE t.status = 'done' ORDER BY t.rowid, r.src, r.tgt, r.metric"
        )
        rows = []
        for r in cur.fetchall():
            row = dict(r)
            labels = json.loads(row.pop("mitigations"))
            if row["exposure"] is None:
                # Recorded before exposure was: none for a trial that no mitigation trained beyond
                # its directions; for one that did (replay, alignment), unknown.
                exposing = any(labels.get(m.name, "none") != "none" for m in MITIGATIONS.values() if m.exposes)
                row["exposure"] = "unknown" if exposing else "none"
            row["steps"], row["tokens"] = budget[row["trial_id"]]
            row["lr_selected"] = chosen[row["trial_id"]]
            rows.append({c: row[c] if c in row else labels.get(c, "none") for c in CSV_COLUMNS})
        return rows

    def export_csv(self, path: Path, select: dict[str, str] | None = None) -> None:
        """Write ``results.csv``: one row per trial × direction × metric (``select``: see :meth:`rows`)."""
        with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows(select))


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection; in a folder this process cannot write (where SQLite cannot create
    the shared-memory file of a WAL store) the file is read as immutable."""
    if not path.is_file():
        raise sqlite3.OperationalError("no such file")
    uri = path.resolve().as_uri()
    try:
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=60)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError:
        return sqlite3.connect(f"{uri}?immutable=1", uri=True)


def _check_store(db: sqlite3.Connection) -> None:
    """Raise :class:`sqlite3.DatabaseError` unless ``db`` is intact and is mtforget's store (or empty)."""
    if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
        raise sqlite3.DatabaseError("the database is damaged (PRAGMA quick_check)")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return
    if not {"trials", "results", "meta"} <= tables:
        raise sqlite3.DatabaseError(f"not an mtforget results store (its tables: {', '.join(sorted(tables))})")
    columns = {r[1] for r in db.execute("PRAGMA table_info(trials)")}
    if not {"trial_id", "status", "config"} <= columns:
        raise sqlite3.DatabaseError("not an mtforget results store (its trials table has other columns)")


def open_store_for_run(out: Path) -> ResultStore:
    """The store of study directory ``out`` for a run that records results. A damaged or foreign
    ``results.sqlite`` is moved aside (kept, with the files SQLite keeps beside it) with a
    warning, and a new store is started; the run then recovers every finished trial from its
    ``trials/<id>/result.json``."""
    path = out / "results.sqlite"
    try:
        return ResultStore(path)
    except StoreUnusable as exc:
        aside = path.with_name(f"results.sqlite.unusable-{time.strftime('%Y%m%d-%H%M%S')}")
        for suffix in ("", "-wal", "-shm", "-journal"):
            part = path.with_name(path.name + suffix)
            if part.exists():
                part.replace(aside.with_name(aside.name + suffix))
        warn(f"{exc}; moved it to {aside.name} and rebuilding the store from "
             f"{out / 'trials' / '*' / 'result.json'}")
        return ResultStore(path)


def open_store_for_report(out: Path) -> ResultStore:
    """The store of study directory ``out``, read-only; a damaged or foreign one is a
    :class:`UsageError` that says how to rebuild it."""
    try:
        return ResultStore(out / "results.sqlite", readonly=True)
    except StoreUnusable as exc:
        raise UsageError(f"{exc}; run 'mtforget run' on this study again (same --out): it keeps this file aside "
                         "and rebuilds the store from trials/*/result.json") from None


# The name of a base-failure record (see BASE_FAILURES): a fingerprint.
_BASE_FAILURE = re.compile(r"^[0-9a-f]{16}\.json$")


def clear_base_failures(out: Path) -> None:
    """Forget the bases that failed in an earlier run of ``out`` (the user may have fixed them):
    the records mtforget wrote there go, anything else stays."""
    folder = out / BASE_FAILURES
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if _BASE_FAILURE.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
    if not any(folder.iterdir()):
        folder.rmdir()
