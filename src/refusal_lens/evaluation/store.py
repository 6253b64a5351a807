"""The results store: every completion, verdict and per-item measurement, keyed by what
produced it, in one SQLite file.

Key of a result: (model weights hash, SAE set, intervention, generation settings, prompt) for a
completion; plus the judge (name and a hash of its settings) for a verdict; (model, SAE set,
intervention, task, item, metric) for a measurement such as a capability answer or a per-prompt
KL. Anything keyed this way is computed once: an interrupted benchmark resumes where it
stopped, a rerun with one more method computes only that method, and the same keys let workers
of a distributed engine share the work later.

A store may be opened over a shared one (`shared=`, by default the user cache's
`results.sqlite`): every row missing from the run's store is looked up there and copied in when
found (so a run folder still holds everything it reports), and every new row is written to both.
A rerun into a new folder then computes nothing that an earlier run computed with the same keys.

Why SQLite: it is in the standard library; one file a person can open with any SQL tool;
transactions make every batch all-or-nothing (a kill at any point leaves the store readable
and without half a batch); WAL mode lets readers (`refusal-lens results`) run while a writer
works, and several writer processes on one machine take turns through the lock with a busy
timeout. Parquet has no transactions or in-place upserts (a killed append leaves a partial file
to clean up), and DuckDB allows one writing process per file and is an extra dependency.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..runs import stable_hash

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS interventions (id TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS judges (id TEXT PRIMARY KEY, name TEXT NOT NULL, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS completions (
    model TEXT NOT NULL, saes TEXT NOT NULL, intervention TEXT NOT NULL,
    generation TEXT NOT NULL, prompt_id TEXT NOT NULL,
    dataset TEXT NOT NULL, item INTEGER NOT NULL, condition TEXT NOT NULL,
    prompt TEXT NOT NULL, completion TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (model, saes, intervention, generation, prompt_id)
);
CREATE TABLE IF NOT EXISTS verdicts (
    model TEXT NOT NULL, saes TEXT NOT NULL, intervention TEXT NOT NULL,
    generation TEXT NOT NULL, prompt_id TEXT NOT NULL, judge TEXT NOT NULL,
    refused INTEGER, complied INTEGER, score REAL, detail TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (model, saes, intervention, generation, prompt_id, judge)
);
CREATE TABLE IF NOT EXISTS measurements (
    model TEXT NOT NULL, saes TEXT NOT NULL, intervention TEXT NOT NULL,
    task TEXT NOT NULL, item TEXT NOT NULL, metric TEXT NOT NULL,
    condition TEXT NOT NULL, value REAL NOT NULL, detail TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (model, saes, intervention, task, item, metric)
);
-- a verdict whose judge was told another request than the prompt (a jailbreak's plain goal)
-- is keyed by both (`asked_key`); this maps that key to the completion's prompt and request
CREATE TABLE IF NOT EXISTS asked (
    key TEXT PRIMARY KEY, prompt_id TEXT NOT NULL, request TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS completions_by_dataset ON completions (dataset, condition);
CREATE INDEX IF NOT EXISTS measurements_by_task ON measurements (task, condition);
"""


def prompt_id(prompt: str) -> str:
    return stable_hash({"prompt": prompt})


def asked_key(prompt: str, request: str) -> str:
    """What a verdict is keyed by: the prompt, or, when the judge was told another request
    (a jailbreak's plain goal), both, since the verdict depends on it."""
    return prompt if request == prompt else f"{prompt}\n\x1fasked: {request}"


LOCATION_KEYS = frozenset({"path", "file", "source"})


def content_only(value: Any) -> Any:
    """A serialised intervention without where its files live (paths change between folders
    and machines; the sha256 and fingerprint next to them say what was applied)."""
    if isinstance(value, Mapping):
        return {k: content_only(v) for k, v in value.items() if k not in LOCATION_KEYS}
    if isinstance(value, list | tuple):
        return [content_only(v) for v in value]
    return value


@dataclass(frozen=True)
class Condition:
    """What a set of results was produced under: model, SAE set and intervention (plus a
    human-readable label, which is not part of the key)."""

    model: str  # weights sha256
    intervention: str  # id from ResultStore.intervention_id
    saes: str = ""  # SAE set identity ("" when the intervention uses none)
    label: str = ""

    def key(self) -> tuple[str, str, str]:
        return (self.model, self.saes, self.intervention)


@dataclass(frozen=True)
class StoredVerdict:
    refused: bool | None
    complied: bool | None
    score: float | None
    detail: dict[str, Any]

    @property
    def degenerate(self) -> bool:
        return bool(self.detail.get("degenerate"))


def _bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


class ResultStore:
    def __init__(
        self, path: str | Path, *, read_only: bool = False, shared: str | Path | None = None
    ) -> None:
        """Open (and, unless `read_only`, create) a store. A read-only store must already be
        a refusal-lens store: its file is never written, not even a schema. `shared`: a store
        read through and written beside this one (see the module's docstring)."""
        self.path = Path(path)
        self.shared: Path | None = None
        if self.path.exists() and self.path.is_dir():
            raise UserError(f"results store {self.path} is a folder; give a file path")
        if read_only:
            self._open_read_only()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self._check_foreign()
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            self._check_version()
        except sqlite3.DatabaseError as error:
            raise UserError(
                f"{self.path} is not a refusal-lens results store ({error}); "
                "pass another --store path"
            ) from None
        if shared is not None and Path(shared).resolve() != self.path.resolve():
            self._attach(Path(shared))

    def _attach(self, shared: Path) -> None:
        ResultStore(shared).close()  # created, or checked to be a store of this schema
        self.db.execute("ATTACH DATABASE ? AS shared", (str(shared),))
        self.shared = shared

    def _tables(self) -> tuple[str, ...]:
        """Where a new row goes: this store, and the shared one when there is one."""
        return ("main", "shared") if self.shared is not None else ("main",)

    def _copy_shared(
        self,
        table: str,
        where: str,
        params: Sequence[Any],
        ids: Sequence[str],
        column: str,
        label: str | None = None,
    ) -> None:
        """Copy the shared store's rows of `table` matching `where` whose `column` is one of
        `ids` (all of them when `ids` is empty) into this store, keeping rows already here;
        `label`: the condition label they take here (another run may have named it
        otherwise)."""
        if self.shared is None:
            return
        columns = self._columns(f"SELECT * FROM main.{table}")
        relabel = label is not None and "condition" in columns
        picked = ", ".join("?" if c == "condition" and relabel else c for c in columns)
        first = (label,) if relabel else ()
        with self.transaction() as db:
            for chunk in _chunks(ids, 500) if ids else [()]:
                marks = f" AND {column} IN ({','.join('?' * len(chunk))})" if chunk else ""
                db.execute(
                    f"INSERT OR IGNORE INTO main.{table} SELECT {picked} FROM shared.{table} "
                    f"WHERE {where}{marks}",
                    (*first, *params, *chunk),
                )

    def _open_read_only(self) -> None:
        if not self.path.is_file():
            raise UserError(
                f"no results store at {self.path}; pass a results.sqlite or a run folder"
            )
        if self.path.stat().st_size == 0:
            raise UserError(
                f"{self.path} is empty, not a refusal-lens results store; pass the "
                "results.sqlite of a benchmark run"
            )
        try:
            self.db = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=60.0
            )
            tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master")}
            if not {"meta", "completions", "verdicts", "measurements", "judges"} <= tables:
                self.db.close()
                raise UserError(
                    f"{self.path} is not a refusal-lens results store (it lacks the results "
                    "tables); pass the results.sqlite of a benchmark run"
                )
            row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.Error as error:
            raise UserError(
                f"{self.path} is not a refusal-lens results store ({error}); pass the "
                "results.sqlite of a benchmark run"
            ) from None
        if row is None or str(row[0]) != str(SCHEMA_VERSION):
            self.db.close()
            raise UserError(
                f"{self.path} has results schema {None if row is None else row[0]}, this version "
                f"reads {SCHEMA_VERSION}; use a store written by this version"
            )

    def _check_foreign(self) -> None:
        tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master")}
        if tables and "meta" not in tables:
            raise UserError(
                f"{self.path} is an SQLite file but not a refusal-lens results store; "
                "pass another path"
            )

    def _check_version(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        elif int(row[0]) != SCHEMA_VERSION:
            raise UserError(
                f"{self.path} has results schema {row[0]}, this version reads "
                f"{SCHEMA_VERSION}; use a new store file"
            )

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All writes inside land together or not at all."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------------ identities

    def intervention_id(self, spec: Sequence[Mapping[str, Any]]) -> str:
        """A stable id for a list of serialised interventions ([] = the base model)."""
        items = [dict(item) for item in spec]
        ident = stable_hash(content_only(items)) if items else "base"
        with self.transaction() as db:
            for where in self._tables():
                db.execute(
                    f"INSERT OR IGNORE INTO {where}.interventions VALUES (?, ?)",
                    (ident, json.dumps(items)),
                )
        return ident

    def judge_id(self, described: Mapping[str, Any]) -> str:
        ident = f"{described['name']}-{stable_hash(dict(described))[:12]}"
        with self.transaction() as db:
            for where in self._tables():
                db.execute(
                    f"INSERT OR IGNORE INTO {where}.judges VALUES (?, ?, ?)",
                    (ident, str(described["name"]), json.dumps(dict(described), sort_keys=True)),
                )
        return ident

    @staticmethod
    def generation_id(settings: Mapping[str, Any]) -> str:
        return stable_hash(dict(settings))

    # ------------------------------------------------------------------ completions

    def completions(
        self,
        condition: Condition,
        generation: str,
        prompts: Sequence[str],
        dataset: str | None = None,
    ) -> dict[int, str]:
        """Stored completions of `prompts` (by their index in the list). Rows found in the
        shared store are copied here under this condition's label and, when `dataset` is
        given, as items of that dataset (their index in `prompts`)."""
        if self.shared is not None:
            self._copy_shared_completions(condition, generation, prompts, dataset)
        found = self._by_prompt(
            "SELECT prompt_id, completion FROM completions WHERE model=? AND saes=? AND "
            "intervention=? AND generation=?",
            (*condition.key(), generation),
            prompts,
        )
        return {i: row[0] for i, row in found.items()}

    def _copy_shared_completions(
        self,
        condition: Condition,
        generation: str,
        prompts: Sequence[str],
        dataset: str | None,
    ) -> None:
        ids = [prompt_id(p) for p in prompts]
        index = {pid: i for i, pid in enumerate(ids)}
        rows = []
        for chunk in _chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            rows += self.db.execute(
                "SELECT prompt_id, dataset, item, prompt, completion, created FROM "
                "shared.completions WHERE model=? AND saes=? AND intervention=? AND "
                f"generation=? AND prompt_id IN ({marks})",
                (*condition.key(), generation, *chunk),
            ).fetchall()
        if not rows:
            return
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO main.completions VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        *condition.key(),
                        generation,
                        pid,
                        dataset if dataset is not None else old_dataset,
                        index[pid] if dataset is not None else old_item,
                        condition.label,
                        prompt,
                        completion,
                        created,
                    )
                    for pid, old_dataset, old_item, prompt, completion, created in rows
                ],
            )

    def add_completions(
        self,
        condition: Condition,
        generation: str,
        dataset: str,
        items: Iterable[tuple[int, str, str]],
    ) -> None:
        """(item index, prompt, completion) rows, written in one transaction."""
        now = time.time()
        rows = [
            (*condition.key(), generation, prompt_id(p), dataset, i, condition.label, p, c, now)
            for i, p, c in items
        ]
        with self.transaction() as db:
            for where in self._tables():
                db.executemany(
                    f"INSERT OR REPLACE INTO {where}.completions VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    rows,
                )

    # ------------------------------------------------------------------ verdicts

    def verdicts(
        self, condition: Condition, generation: str, judge: str, prompts: Sequence[str]
    ) -> dict[int, StoredVerdict]:
        self._copy_shared(
            "verdicts",
            "model=? AND saes=? AND intervention=? AND generation=? AND judge=?",
            (*condition.key(), generation, judge),
            [prompt_id(p) for p in prompts],
            "prompt_id",
        )
        found = self._by_prompt(
            "SELECT prompt_id, refused, complied, score, detail FROM verdicts WHERE model=? "
            "AND saes=? AND intervention=? AND generation=? AND judge=?",
            (*condition.key(), generation, judge),
            prompts,
        )
        return {
            i: StoredVerdict(_bool(refused), _bool(complied), score, json.loads(detail))
            for i, (refused, complied, score, detail) in found.items()
        }

    def _by_prompt(
        self, select: str, params: tuple[str, ...], prompts: Sequence[str]
    ) -> dict[int, tuple[Any, ...]]:
        """Rows of `select` (whose first column is prompt_id) for these prompts, by their
        index in the list; prompt ids go in chunks to stay under SQLite's parameter limit."""
        ids = [prompt_id(p) for p in prompts]
        found: dict[str, tuple[Any, ...]] = {}
        for chunk in _chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(f"{select} AND prompt_id IN ({marks})", (*params, *chunk))
            found.update({row[0]: tuple(row[1:]) for row in rows.fetchall()})
        return {i: found[pid] for i, pid in enumerate(ids) if pid in found}

    def add_verdicts(
        self,
        condition: Condition,
        generation: str,
        judge: str,
        items: Iterable[tuple[str, StoredVerdict]],
    ) -> None:
        now = time.time()
        rows = [
            (
                *condition.key(),
                generation,
                prompt_id(p),
                judge,
                v.refused,
                v.complied,
                v.score,
                json.dumps(v.detail),
                now,
            )
            for p, v in items
        ]
        with self.transaction() as db:
            for where in self._tables():
                db.executemany(
                    f"INSERT OR REPLACE INTO {where}.verdicts VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    rows,
                )

    def add_asked(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Record, for (prompt, request) pairs whose verdicts are keyed by both, which
        completion and request a key stands for (so queries join them to their answers)."""
        rows = [(prompt_id(asked_key(p, r)), prompt_id(p), r) for p, r in pairs if p != r]
        if not rows:
            return
        with self.transaction() as db:
            for where in self._tables():
                db.executemany(f"INSERT OR IGNORE INTO {where}.asked VALUES (?,?,?)", rows)

    # ------------------------------------------------------------------ measurements

    def measurements(
        self, condition: Condition, task: str, metric: str, items: Sequence[str] = ()
    ) -> dict[str, float]:
        """Stored values of one metric by item (`items`: the ones wanted from the shared
        store; empty: all it has)."""
        self._copy_shared(
            "measurements",
            "model=? AND saes=? AND intervention=? AND task=? AND metric=?",
            (*condition.key(), task, metric),
            items,
            "item",
            condition.label,
        )
        rows = self.db.execute(
            "SELECT item, value FROM measurements WHERE model=? AND saes=? AND intervention=? "
            "AND task=? AND metric=?",
            (*condition.key(), task, metric),
        )
        return dict(rows.fetchall())

    def add_measurements(
        self,
        condition: Condition,
        task: str,
        metric: str,
        items: Iterable[tuple[str, float, Mapping[str, Any]]],
    ) -> None:
        """(item, value, detail) rows of one metric, in one transaction."""
        self.add_measurement_rows(
            condition, task, [(item, metric, value, detail) for item, value, detail in items]
        )

    def add_measurement_rows(
        self,
        condition: Condition,
        task: str,
        rows: Iterable[tuple[str, str, float, Mapping[str, Any]]],
    ) -> None:
        """(item, metric, value, detail) rows of several metrics, in one transaction."""
        now = time.time()
        records = [
            (
                *condition.key(),
                task,
                item,
                metric,
                condition.label,
                float(value),
                json.dumps(dict(detail)),
                now,
            )
            for item, metric, value, detail in rows
        ]
        with self.transaction() as db:
            for where in self._tables():
                db.executemany(
                    f"INSERT OR REPLACE INTO {where}.measurements VALUES (?,?,?,?,?,?,?,?,?,?)",
                    records,
                )

    # ------------------------------------------------------------------ queries

    def query(self, table: str, filters: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Rows of one table (with the judge's name joined into verdicts), filtered by exact
        column values."""
        mapped = self._has_asked()
        answered = _answered(mapped)
        views = {
            "completions": "SELECT * FROM completions",
            "verdicts": (
                f"SELECT c.dataset, c.item, c.condition, v.*, "
                f"{'a.request' if mapped else 'NULL'} AS asked, "
                f"j.name AS judge_name FROM verdicts v {answered}"
            ),
            "measurements": "SELECT * FROM measurements",
            "summary": SUMMARY_SQL.format(answered=answered),
        }
        if table not in views:
            raise UserError(f"unknown results table {table!r}; choose from {', '.join(views)}")
        sql = f"SELECT * FROM ({views[table]})"
        params: list[str] = []
        clauses = []
        columns = self._columns(views[table])
        for column, value in (filters or {}).items():
            if column not in columns:
                raise UserError(
                    f"results table {table} has no column {column!r}; its columns: "
                    f"{', '.join(columns)}"
                )
            clauses.append(f'"{column}" = ?')
            params.append(value)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        cursor = self.db.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _has_asked(self) -> bool:
        """Stores written before the `asked` table (read-only ones are never migrated)."""
        found = self.db.execute("SELECT 1 FROM sqlite_master WHERE name='asked'").fetchone()
        return found is not None

    def _columns(self, view: str) -> list[str]:
        cursor = self.db.execute(f"SELECT * FROM ({view}) LIMIT 0")
        return [d[0] for d in cursor.description]

    def counts(self) -> dict[str, int]:
        return {
            table: int(self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
            for table in ("completions", "verdicts", "measurements")
        }


SUMMARY_SQL = """
SELECT c.condition, c.dataset, j.name AS judge_name, v.judge, COUNT(*) AS n,
       AVG(v.refused) AS refusal_rate, AVG(v.complied) AS complied_rate
FROM verdicts v {answered}
GROUP BY c.model, c.saes, c.intervention, c.generation, c.dataset, v.judge
"""


def _answered(mapped: bool) -> str:
    """Verdicts joined to the completions they judge (through `asked` where a verdict is keyed
    by its request too, when the store has that table) and to their judge's name."""
    if not mapped:
        return (
            "JOIN completions c USING (model, saes, intervention, generation, prompt_id) "
            "JOIN judges j ON j.id = v.judge"
        )
    return (
        "LEFT JOIN asked a ON a.key = v.prompt_id "
        "JOIN completions c ON c.model = v.model AND c.saes = v.saes "
        "AND c.intervention = v.intervention AND c.generation = v.generation "
        "AND c.prompt_id = COALESCE(a.prompt_id, v.prompt_id) "
        "JOIN judges j ON j.id = v.judge"
    )


def shared_store(cache: str | Path | None = None) -> Path:
    """The results store every run reads through: ``results.sqlite`` in the user cache."""
    from ..settings import cache_dir

    return cache_dir(cache) / "results.sqlite"


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def stored(verdict: Any) -> StoredVerdict:
    """A judge's `Verdict` as the store keeps it."""
    data = asdict(verdict)
    return StoredVerdict(data["refused"], data["complied"], data["score"], data["detail"])
