"""`diatabase mongo init`: collections, indexes and (optionally) sharding for a database.

The server itself creates the indexes of the collections it finds at start-up and of a new
resource type at its first write; `init` does it ahead of time (an operator's step before
opening the doors), and is the only place that shards collections.

Sharding (see README, "MongoDB"): resource collections on `{pc: "hashed"}`, the patient
compartment, so that all of a patient's data shares a shard and patient-scoped work stays
on one; `history` on `{i: "hashed"}`, the resource id, so that every version of a resource
is on one shard and the unique history `_id` (the guard against two writers making the same
version) is enforced there.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fhir_server.model.resource_types import resource_types as all_resource_types

if TYPE_CHECKING:
    from fhir_server.storage.mongo import MongoStorage

# As in mongo_indexes.py (not imported here, so that `diatabase --help` needs no pymongo).
HISTORY = "history"

# The types a diabetes warehouse fills first; other types get their collection and
# indexes at their first write (or with --types all).
CORE_TYPES = (
    "AllergyIntolerance",
    "CarePlan",
    "Condition",
    "Device",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "Goal",
    "Immunization",
    "Medication",
    "MedicationRequest",
    "MedicationStatement",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "Procedure",
    "Provenance",
    "ServiceRequest",
    "Specimen",
)
RESOURCE_SHARD_KEY = {"pc": "hashed"}
HISTORY_SHARD_KEY = {"i": "hashed"}


class ShardingUnavailable(RuntimeError):
    pass


@dataclass
class InitReport:
    collections: list[str] = field(default_factory=list)
    indexes_per_collection: int = 0
    sharded: list[str] = field(default_factory=list)


def is_sharded_cluster(storage: MongoStorage) -> bool:
    try:
        hello = storage.client.admin.command("hello")
    except NotImplementedError:  # mongomock
        return False
    return hello.get("msg") == "isdbgrid"


def init_database(
    storage: MongoStorage, types: Sequence[str] = CORE_TYPES, shard: bool = False
) -> InitReport:
    from fhir_server.storage.mongo_indexes import RESOURCE_INDEXES

    report = InitReport(indexes_per_collection=len(RESOURCE_INDEXES))
    existing = set(storage.db.list_collection_names())
    for rtype in sorted(set(types)):
        if rtype not in existing:
            storage.db.create_collection(rtype)
        report.collections.append(rtype)
    storage.ensure_indexes(report.collections)
    if shard:
        if not is_sharded_cluster(storage):
            raise ShardingUnavailable(
                "--shard needs a sharded cluster: connect to a mongos router (this server "
                "is not one). Collections and indexes were created."
            )
        admin = storage.client.admin
        name = storage.db.name
        admin.command("enableSharding", name)  # implicit since MongoDB 6.0; harmless
        for rtype in [*storage.resource_types(), HISTORY]:
            key = HISTORY_SHARD_KEY if rtype == HISTORY else RESOURCE_SHARD_KEY
            storage.db[rtype].create_index(list(key.items()))
            admin.command("shardCollection", f"{name}.{rtype}", key=key)
            report.sharded.append(rtype)
    return report


def cmd_mongo_init(args: argparse.Namespace) -> int:
    from fhir_server.settings import Settings
    from fhir_server.storage import open_storage

    url = Settings.from_env(db_url=args.db).db_url
    if not url.startswith(("mongodb:", "mongodb+srv:", "mongomock:")):
        raise SystemExit(f"diatabase mongo init: not a MongoDB URL: {url}")
    if args.types == "all":
        types: Sequence[str] = sorted(all_resource_types())
    elif args.types:
        types = [t.strip() for t in args.types.split(",") if t.strip()]
        unknown = [t for t in types if t not in all_resource_types()]
        if unknown:
            raise SystemExit(f"diatabase mongo init: not resource types: {', '.join(unknown)}")
    else:
        types = CORE_TYPES
    storage = open_storage(url)
    try:
        report = init_database(storage, types, shard=args.shard)
    except ShardingUnavailable as exc:
        print(f"diatabase mongo init: {exc}")
        return 2
    finally:
        storage.close()
    print(
        f"{url}: {len(report.collections)} resource collections with "
        f"{report.indexes_per_collection} indexes each, history and its indexes; "
        f"transactions: {storage.txmode}"
    )
    if report.sharded:
        print(
            f"sharded {len(report.sharded)} collections: resources on {RESOURCE_SHARD_KEY}, "
            f"history on {HISTORY_SHARD_KEY}"
        )
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    mongo = subparsers.add_parser("mongo", help="MongoDB administration")
    commands = mongo.add_subparsers(dest="mongo_command", required=True)
    init = commands.add_parser(
        "init", help="create the collections and indexes (and shard them with --shard)"
    )
    init.add_argument("--db", default=None, help="mongodb://host:port/dbname (or DIATABASE_DB)")
    init.add_argument(
        "--types",
        default=None,
        help="comma-separated resource types, or 'all' (default: the core clinical types)",
    )
    init.add_argument(
        "--shard",
        action="store_true",
        help="shard resource collections on the patient compartment (needs a mongos)",
    )
    init.set_defaults(func=cmd_mongo_init)
    return mongo
