"""Storage backends behind one protocol (`base.Storage`), chosen by URL."""

from __future__ import annotations

from fhir_server.storage.base import Storage


def open_storage(url: str) -> Storage:
    """`sqlite:///path/to.db` (or `sqlite://:memory:`), or `mongodb://host/db`."""
    if url.startswith("sqlite:"):
        from fhir_server.storage.sqlite import SqliteStorage

        return SqliteStorage.from_url(url)
    if url.startswith(("mongodb:", "mongodb+srv:", "mongomock:")):
        try:
            from fhir_server.storage.mongo import MongoStorage  # type: ignore[import-not-found]
        except ImportError:
            raise ValueError("The MongoDB backend is not available in this version") from None
        return MongoStorage.from_url(url)
    raise ValueError(f"Unsupported database URL {url!r}: use sqlite:///path or mongodb://")
