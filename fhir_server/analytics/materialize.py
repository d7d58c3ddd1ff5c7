"""Views materialised for analysis: an embedded DuckDB database and one Parquet file per
view, kept up to date from the store's history since the last run.

Layout of the output folder:

    views.duckdb          one table per view (named after the view), plus
                          `_diatabase_views` (view, fingerprint, since): where each stopped
    <view>.parquet        the same table as Parquet (zstd), rewritten by DuckDB at each run

Each table has the view's columns and `_resource_key`, the key of the resource a row came
from. A first run (or a run after the view changed: another fingerprint) evaluates the
view over every current resource of its type. Later runs read the type's history since
the previous run (minus a margin for transactions that were committing meanwhile),
delete the rows of every resource changed or deleted since, and insert the rows of their
current versions: only what changed is read and evaluated. DuckDB then writes the Parquet
file from the table, which is much faster than evaluating the view again.

For a research recipient (`source` = `FacadeSource`), the resources are those the
de-identification facade releases to it, and `_resource_key` is the pseudonymized id; when
the objections to research use change, the tables are made again (part of the fingerprint).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import duckdb
import orjson
import pyarrow as pa

from fhir_server.analytics.output import arrow_schema, record_batch
from fhir_server.analytics.runner import run_view_keyed
from fhir_server.analytics.viewdefinition import CompiledView, compile_view

STATE_TABLE = "_diatabase_views"
KEY_COLUMN = "_resource_key"
BATCH_ROWS = 50_000
HISTORY_PAGE = 1_000
# History rows committed up to this long before a run started may not have been visible
# to it (a transaction that was committing): the next run reads them again.
MARGIN_SECONDS = 5.0


class Source(Protocol):
    def current(self, rtype: str) -> Iterator[tuple[str, dict]]:
        """(key, resource) of every current resource of `rtype`."""

    def changed_since(self, rtype: str, since: float) -> tuple[set[str], list[tuple[str, dict]]]:
        """(keys of resources changed or deleted since, (key, resource) of their current
        versions)."""

    def state(self) -> str:
        """What decides the rows besides the resources ("" when nothing does): when it
        changes, the tables are made again instead of updated from the history."""


class StoreSource:
    """The clinical store, unrestricted (an operator's command)."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage

    def current(self, rtype: str) -> Iterator[tuple[str, dict]]:
        for stored in self.storage.iter_current(rtype):
            yield stored.id, orjson.loads(stored.json)

    def changed_ids(self, rtype: str, since: float) -> set[str]:
        ids: set[str] = set()
        cursor = None
        while True:
            page = self.storage.history(rtype, None, since, None, HISTORY_PAGE, cursor)
            ids.update(entry.id for entry in page.entries)
            cursor = page.next_cursor
            if not cursor or not page.entries:
                return ids

    def changed_since(self, rtype: str, since: float) -> tuple[set[str], list[tuple[str, dict]]]:
        ids = self.changed_ids(rtype, since)
        current = []
        for rid in sorted(ids):
            stored = self.storage.read(rtype, rid)
            if stored is not None and not stored.deleted and stored.json is not None:
                current.append((rid, orjson.loads(stored.json)))
        return ids, current

    def state(self) -> str:
        return ""


class FacadeSource:
    """What the de-identification facade releases to one recipient (same pseudonyms,
    shifted dates and suppressions as its other outputs)."""

    def __init__(self, store: StoreSource, facade: Any, engine: Any) -> None:
        self.store = store
        self.facade = facade
        self.engine = engine

    def _key(self, rtype: str, rid: str) -> str:
        return (self.engine.reference(f"{rtype}/{rid}") or "").split("/", 1)[-1]

    def current(self, rtype: str) -> Iterator[tuple[str, dict]]:
        for resource in self.facade.released(self.engine, rtype):
            yield resource.get("id", ""), resource

    def changed_since(self, rtype: str, since: float) -> tuple[set[str], list[tuple[str, dict]]]:
        ids = self.store.changed_ids(rtype, since)
        stored = [self.store.storage.read(rtype, rid) for rid in sorted(ids)]
        live = [s for s in stored if s is not None and not s.deleted]
        current = [(r.get("id", ""), r) for r in self.facade.release(self.engine, live)]
        return {self._key(rtype, rid) for rid in ids}, current

    def state(self) -> str:
        """The objections to research use in force (a patient who objects since the last
        run has rows there that no history of the view's type would remove)."""
        return self.facade.release_state(self.engine)


@dataclass
class Materialized:
    view: str
    mode: str  # "full" | "incremental" | "unchanged"
    rows: int  # rows in the table after the run
    changed_resources: int
    seconds: float
    parquet_bytes: int


def fingerprint(view: dict) -> str:
    return hashlib.sha256(orjson.dumps(view, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def table_name(view: CompiledView) -> str:
    if not view.name:
        raise ValueError("a materialised view needs a name (its table's name)")
    return view.name


class Materializer:
    def __init__(self, folder: str | Path, source: Source,
                 margin_seconds: float = MARGIN_SECONDS) -> None:  # fmt: skip
        self.margin = margin_seconds
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.source = source
        self.db = duckdb.connect(str(self.folder / "views.duckdb"))
        self.db.execute(
            f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} "
            "(view VARCHAR PRIMARY KEY, fingerprint VARCHAR, since DOUBLE)"
        )

    def close(self) -> None:
        self.db.close()

    def materialize(self, definition: dict) -> Materialized:
        started = time.time()
        view = compile_view(definition)
        name = table_name(view)
        source_state = self.source.state()
        print_ = fingerprint(definition if not source_state
                             else {"view": definition, "source": source_state})  # fmt: skip
        # fetchall: a result left unfinished blocks DuckDB's next `register`
        found = self.db.execute(
            f"SELECT fingerprint, since FROM {STATE_TABLE} WHERE view = ?", [name]
        ).fetchall()
        state = found[0] if found else None
        schema = arrow_schema([*view.column_types, (KEY_COLUMN, None, False)])
        if state is None or state[0] != print_:
            mode, changed = "full", self._rebuild(view, name, schema)
        else:
            mode, changed = self._update(view, name, schema, state[1])
        self.db.execute(
            f"INSERT OR REPLACE INTO {STATE_TABLE} VALUES (?, ?, ?)",
            [name, print_, started - self.margin],
        )
        parquet = self.folder / f"{name}.parquet"
        if mode != "unchanged" or not parquet.exists():
            # written beside, then renamed: a reader (a Measure's SQL) never sees half a file
            partial = self.folder / f".{name}.parquet.partial"
            self.db.execute(f"COPY \"{name}\" TO '{partial}' (FORMAT PARQUET, COMPRESSION ZSTD)")
            os.replace(partial, parquet)
        rows = self.db.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
        return Materialized(name, mode, rows, changed, time.time() - started,
                            parquet.stat().st_size)  # fmt: skip

    def _insert(self, name: str, schema: pa.Schema, rows: Iterator[tuple]) -> int:
        count = 0
        batch: list[tuple] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= BATCH_ROWS:
                count += self._insert_batch(name, schema, batch)
                batch = []
        if batch:
            count += self._insert_batch(name, schema, batch)
        return count

    def _insert_batch(self, name: str, schema: pa.Schema, batch: list[tuple]) -> int:
        arrow = pa.Table.from_batches([record_batch(schema, batch)])
        self.db.register("_incoming", arrow)
        try:
            self.db.execute(f'INSERT INTO "{name}" SELECT * FROM _incoming')
        finally:
            self.db.unregister("_incoming")
        return len(batch)

    def _rebuild(self, view: CompiledView, name: str, schema: pa.Schema) -> int:
        empty = pa.Table.from_batches([], schema=schema)
        self.db.register("_empty", empty)
        try:
            self.db.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM _empty')
        finally:
            self.db.unregister("_empty")
        resources = 0

        def counted() -> Iterator[tuple[str, dict]]:
            nonlocal resources
            for item in self.source.current(view.resource):
                resources += 1
                yield item

        self._insert(name, schema, run_view_keyed(view, counted()))
        return resources

    def _update(self, view: CompiledView, name: str, schema: pa.Schema, since: float
                ) -> tuple[str, int]:  # fmt: skip
        keys, current = self.source.changed_since(view.resource, since)
        if not keys:
            return "unchanged", 0
        self.db.begin()
        try:
            self.db.register("_changed", pa.table({"key": sorted(keys)}))
            self.db.execute(f'DELETE FROM "{name}" WHERE {KEY_COLUMN} IN '
                            "(SELECT key FROM _changed)")  # fmt: skip
            self.db.unregister("_changed")
            self._insert(name, schema, run_view_keyed(view, iter(current)))
            self.db.commit()
        except BaseException:
            self.db.rollback()
            raise
        return "incremental", len(keys)
