"""A whole pseudonymized extract for one recipient: NDJSON per type + a signed manifest.

Order of work: every Patient is pseudonymized first and the k-anonymity check runs on the
released quasi-identifiers (generalizing or suppressing, see kanonymity.py); then every
other type is streamed from storage, pseudonymized, and written one line per resource,
skipping the resources of suppressed patients. Files are hashed as they are written and
the manifest (counts, hashes, k-anonymity report, rules hash) is signed with Ed25519.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fhir_server.deid.engine import Deidentifier
from fhir_server.deid.facade import served_types
from fhir_server.deid.kanonymity import enforce
from fhir_server.deid.signing import MANIFEST, sign
from fhir_server.deid.views import ViewStore, pseudonymized
from fhir_server.rights.withholding import Withholding
from fhir_server.service.fhir import FhirService
from fhir_server.storage.base import StoredResource, instant
from fhir_server.storage.private_files import private_folder

FORMAT = "diatabase-deid-export/1"
CHUNK = 1000  # lines written, hashed and reported as progress together
_PATIENT_LINKS = (b'"subject"', b'"patient"', b'"beneficiary"')


class ExportCancelled(Exception):
    pass


def planned_counts(service: FhirService, types: list[str] | None = None) -> dict[str, int]:
    counts = {}
    for rtype in types or served_types():
        n = service.storage.count(rtype)
        if n:
            counts[rtype] = n
    return counts


def run_export(
    service: FhirService,
    engine: Deidentifier,
    out_dir: str | Path,
    signing_key: Ed25519PrivateKey,
    types: list[str] | None = None,
    on_progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    views: ViewStore | None = None,
) -> dict[str, Any]:
    """Write the extract into `out_dir` (created) and return the signed manifest. With the
    recipient's view store (`views`, usable: made with this engine's keys and rules), the
    rows made from current versions are copied and only the others pseudonymized: the
    same bytes, without the engine's work."""
    folder = private_folder(out_dir)  # the files in it are nobody else's to read
    started = time.time()
    counts = planned_counts(service, types)
    rules = engine.rules
    suppressed_rules = 0
    progress = on_progress or (lambda n: None)

    # Objections to research use: patients objecting now are left out of the population
    # (and of k-anonymity); every chunk is checked again as it is written, so an objection
    # recorded while the export runs applies to the rest of it.
    withholding = Withholding.of(service)
    objected = 0
    patients: dict[str, dict[str, Any]] = {}
    if "Patient" in counts:
        for batch in _batches(service.storage.iter_current("Patient")):
            bodies = _bodies(engine, views, batch)
            released = withholding.released(engine, bodies)
            for stored, body, kept in zip(batch, bodies, released, strict=True):
                if body is None:
                    suppressed_rules += 1
                elif kept is None:
                    objected += 1
                else:
                    patients[stored.id] = orjson.loads(body)
            progress(len(batch))
    report = enforce(patients, rules.k, rules.quasi_identifiers)
    excluded = set(report.suppressed)

    output = []
    skipped = [len(excluded)]  # resources left out with their suppressed patient
    for rtype, _ in sorted(counts.items()):
        path = folder / f"{rtype}.ndjson"
        digest, written, size = hashlib.sha256(), 0, 0
        with path.open("wb") as handle:
            if rtype == "Patient":
                lines = (orjson.dumps(p) for pid, p in patients.items() if pid not in excluded)
            else:
                lines = _lines(service, engine, views, rtype, excluded, progress, skipped)
            chunk: list[bytes] = []
            for line in lines:
                if line is None:
                    suppressed_rules += 1
                    continue
                chunk.append(line)
                if len(chunk) == CHUNK:
                    if should_stop is not None and should_stop():
                        raise ExportCancelled()
                    kept = [b for b in withholding.released(engine, chunk) if b is not None]
                    objected += len(chunk) - len(kept)
                    size += _write(handle, digest, kept)
                    written += len(kept)
                    chunk = []
            kept = [b for b in withholding.released(engine, chunk) if b is not None]
            objected += len(chunk) - len(kept)
            size += _write(handle, digest, kept)
            written += len(kept)
        if written == 0:
            path.unlink()
            continue
        output.append(
            {
                "type": rtype,
                "file": path.name,
                "count": written,
                "bytes": size,
                "sha256": digest.hexdigest(),
            }
        )
    manifest = {
        "format": FORMAT,
        "recipient": engine.keys.recipient_id,
        "transactionTime": instant(started),
        "rules": {"name": rules.name, "sha256": hashlib.sha256(rules.source).hexdigest()},
        "output": output,
        "kAnonymity": report.to_json(),
        "suppressedResources": {
            "byRules": suppressed_rules,
            "ofSuppressedPatients": skipped[0],
            "byObjection": objected,
        },
        "durationSeconds": round(time.time() - started, 3),
    }
    signed = sign(manifest, signing_key)
    (folder / MANIFEST).write_bytes(orjson.dumps(signed, option=orjson.OPT_INDENT_2))
    return signed


def _lines(
    service: FhirService,
    engine: Deidentifier,
    views: ViewStore | None,
    rtype: str,
    excluded: set[str],
    progress: Callable[[int], None],
    skipped: list[int],
) -> Iterator[bytes | None]:
    for batch in _batches(service.storage.iter_current(rtype)):
        progress(len(batch))
        kept = []
        for stored in batch:
            raw = stored.json
            assert raw is not None
            linked = excluded and any(link in raw for link in _PATIENT_LINKS)
            if linked and _patient_of(raw) in excluded:
                skipped[0] += 1
            else:
                kept.append(stored)
        yield from _bodies(engine, views, kept)


def _batches(resources: Iterable[StoredResource]) -> Iterator[list[StoredResource]]:
    """Current (not deleted) resources, CHUNK at a time (one view-store look-up each)."""
    batch: list[StoredResource] = []
    for stored in resources:
        if stored.json is None:
            continue
        batch.append(stored)
        if len(batch) == CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


def _bodies(
    engine: Deidentifier, views: ViewStore | None, batch: list[StoredResource]
) -> list[bytes | None]:
    """The pseudonymized JSON of each resource (None: suppressed by the rules)."""
    viewed = views.lookup(batch) if views is not None and batch else {}
    return pseudonymized(engine, viewed, batch)


def _write(handle: Any, digest: Any, lines: list[bytes]) -> int:
    """Write lines as NDJSON in one call (and hash them): per-line calls cost more."""
    if not lines:
        return 0
    data = b"\n".join(lines) + b"\n"
    handle.write(data)
    digest.update(data)
    return len(data)


def _patient_of(raw: bytes) -> str | None:
    resource = orjson.loads(raw)
    for key in ("subject", "patient", "beneficiary"):
        link = resource.get(key)
        ref = link.get("reference") if isinstance(link, dict) else None
        if isinstance(ref, str) and ref.startswith("Patient/"):
            return ref.split("/")[1]
    return None
