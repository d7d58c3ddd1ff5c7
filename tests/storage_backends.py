"""The storage backends the contract suite runs against.

Each entry opens a fresh, empty store.

- `sqlite`: the embedded default, for real.
- `mongomock`: the MongoDB backend on mongomock, an in-memory imitation of MongoDB (no
  MongoDB server can be installed on the CI machines). mongomock has no sessions, hence no
  multi-document transactions: the store runs in the test-only `single-writer` mode (writes
  serialised by a lock, rolled back by an undo log; see fhir_server/storage/mongo.py).
- `mongodb`: only when `MONGODB_URI` is set (`MONGODB_URI=mongodb://localhost:27017 make
  test`): the real server, each store in a fresh database dropped at exit. On a replica set
  the store uses real multi-document transactions; a standalone server cannot roll back two
  writes, so there the contract (which rolls back multi-resource transactions) runs in
  `single-writer` mode too, and test_mongo_transactions.py checks the standalone refusal.
"""

from __future__ import annotations

import atexit
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from fhir_server.storage import open_storage
from fhir_server.storage.base import Storage

MONGODB_URI = os.environ.get("MONGODB_URI", "").strip()


def sqlite_store(tmp_path: Path) -> Storage:
    return open_storage(f"sqlite:///{tmp_path / 'contract.db'}")


def mongomock_url() -> str:
    return f"mongomock://localhost/diatabase_{uuid.uuid4().hex[:12]}?txmode=single-writer"


def mongomock_store(tmp_path: Path) -> Storage:
    return open_storage(mongomock_url())


def real_mongodb_url(txmode: str | None = None) -> str:
    """A fresh database on the server of MONGODB_URI, dropped when the tests end."""
    from urllib.parse import urlsplit, urlunsplit

    import pymongo

    name = f"diatabase_test_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(MONGODB_URI)
    options = [parts.query, f"txmode={txmode}" if txmode else ""]
    if "@" in parts.netloc and "authsource=" not in parts.query.lower():
        # The URI's path was also where its user authenticates: keep that when it changes.
        options.append(f"authSource={parts.path.lstrip('/') or 'admin'}")
    query = "&".join(q for q in options if q)
    url = urlunsplit(parts._replace(path=f"/{name}", query=query))

    def drop() -> None:
        with pymongo.MongoClient(MONGODB_URI, serverSelectionTimeoutMS=3000) as client:
            client.drop_database(name)

    atexit.register(drop)
    return url


def real_mongodb_supports_transactions() -> bool:
    import pymongo

    with pymongo.MongoClient(MONGODB_URI, serverSelectionTimeoutMS=5000) as client:
        hello = client.admin.command("hello")
    return bool(hello.get("setName")) or hello.get("msg") == "isdbgrid"


def mongodb_store(tmp_path: Path) -> Storage:
    txmode = None if real_mongodb_supports_transactions() else "single-writer"
    return open_storage(real_mongodb_url(txmode))


BACKENDS: dict[str, Callable[[Path], Storage]] = {
    "sqlite": sqlite_store,
    "mongomock": mongomock_store,
}
if MONGODB_URI:
    BACKENDS["mongodb"] = mongodb_store
