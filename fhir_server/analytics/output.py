"""A view's rows written as CSV, NDJSON, JSON or Parquet, in chunks as they come.

Each writer is a generator of bytes over an iterator of rows, so an HTTP response streams
a table of any size with one chunk in memory. A `collection` column is a JSON array in
CSV, NDJSON and JSON, and a Parquet list. Parquet goes through pyarrow, in row groups of
`PARQUET_ROW_GROUP` rows; its column types come from the view's column `type`s.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from functools import cache
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import pyarrow as pa

CHUNK_ROWS = 2_000
PARQUET_ROW_GROUP = 65_536

MEDIA_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson",
    "json": "application/json",
    "parquet": "application/vnd.apache.parquet",
}
# `_format` values a client may send for each output
FORMAT_ALIASES = {
    "csv": "csv", "text/csv": "csv",
    "ndjson": "ndjson", "application/x-ndjson": "ndjson", "application/ndjson": "ndjson",
    "application/fhir+ndjson": "ndjson",
    "json": "json", "application/json": "json",
    "parquet": "parquet", "application/vnd.apache.parquet": "parquet",
    "application/parquet": "parquet",
}  # fmt: skip

_INTEGER_TYPES = frozenset({"integer", "positiveInt", "unsignedInt", "integer64"})


@cache
def _arrow_types() -> dict[str, pa.DataType]:
    # pyarrow is imported when Parquet is asked for (a second of the server's start)
    import pyarrow as pa

    return {"boolean": pa.bool_(), "decimal": pa.float64(),
            **{name: pa.int64() for name in _INTEGER_TYPES}}  # fmt: skip


ColumnType = tuple[str, str | None, bool]  # name, FHIR type, collection


def write(fmt: str, columns: list[ColumnType], rows: Iterable[tuple], header: bool = True
          ) -> Iterator[bytes]:  # fmt: skip
    if fmt == "csv":
        return csv_chunks(columns, rows, header)
    if fmt == "ndjson":
        return ndjson_chunks(columns, rows)
    if fmt == "json":
        return json_chunks(columns, rows)
    if fmt == "parquet":
        return parquet_chunks(columns, rows)
    raise ValueError(f"unknown output format {fmt!r}")


def _batches(rows: Iterable[tuple], size: int) -> Iterator[list[tuple]]:
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _csv_value(value: Any) -> Any:
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value


def csv_chunks(columns: list[ColumnType], rows: Iterable[tuple], header: bool = True
               ) -> Iterator[bytes]:  # fmt: skip
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180
    if header:
        writer.writerow([name for name, _, _ in columns])
    for batch in _batches(rows, CHUNK_ROWS):
        writer.writerows([_csv_value(v) for v in row] for row in batch)
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode()


def ndjson_chunks(columns: list[ColumnType], rows: Iterable[tuple]) -> Iterator[bytes]:
    names = [name for name, _, _ in columns]
    for batch in _batches(rows, CHUNK_ROWS):
        yield b"".join(orjson.dumps(dict(zip(names, row, strict=True))) + b"\n" for row in batch)


def json_chunks(columns: list[ColumnType], rows: Iterable[tuple]) -> Iterator[bytes]:
    names = [name for name, _, _ in columns]
    opening = b"["  # sent with the first rows, so that an error before them is a 400
    for batch in _batches(rows, CHUNK_ROWS):
        parts = [orjson.dumps(dict(zip(names, row, strict=True))) for row in batch]
        yield opening + b",".join(parts)
        opening = b","
    yield b"[]" if opening == b"[" else b"]"


def arrow_schema(columns: list[ColumnType]) -> pa.Schema:
    import pyarrow as pa

    fields = []
    for name, fhir_type, collection in columns:
        arrow_type = _arrow_types().get(fhir_type or "", pa.string())
        fields.append(pa.field(name, pa.list_(arrow_type) if collection else arrow_type))
    return pa.schema(fields)


def _string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)


def _number(kind: type) -> Any:
    def convert(value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return kind(value)
        return None

    return convert


def _converter(arrow_type: pa.DataType) -> Any:
    """value -> what pyarrow takes for `arrow_type` (None when the value does not fit)."""
    import pyarrow as pa

    if pa.types.is_list(arrow_type):
        inner = _converter(arrow_type.value_type)
        return lambda value: None if value is None else [inner(v) for v in value]
    if pa.types.is_string(arrow_type):
        base = _string
    elif pa.types.is_boolean(arrow_type):
        base = lambda value: value if isinstance(value, bool) else None  # noqa: E731
    elif pa.types.is_integer(arrow_type):
        base = _number(int)
    elif pa.types.is_floating(arrow_type):
        base = _number(float)
    else:
        base = lambda value: value  # noqa: E731
    return lambda value: None if value is None else base(value)


def record_batch(schema: pa.Schema, rows: list[tuple]) -> pa.RecordBatch:
    import pyarrow as pa

    arrays = []
    for i, field in enumerate(schema):
        convert = _converter(field.type)
        arrays.append(pa.array([convert(row[i]) for row in rows], type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


class _Sink(io.RawIOBase):
    """What the Parquet writer writes, handed out as it grows."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.chunks.append(chunk)
        self.position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.position

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        return out


def parquet_chunks(columns: list[ColumnType], rows: Iterable[tuple]) -> Iterator[bytes]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema(columns)
    sink = _Sink()
    with pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema, compression="zstd") as writer:
        for batch in _batches(rows, PARQUET_ROW_GROUP):
            writer.write_batch(record_batch(schema, batch))
            if chunk := sink.take():
                yield chunk
    if chunk := sink.take():
        yield chunk
