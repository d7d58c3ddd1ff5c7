"""A whole pseudonymized extract for one recipient: NDJSON per type + a signed manifest.

Order of work: every Patient is pseudonymized first and the recipient's Release is
computed over them (release.py, the same decision the facade makes: k-anonymity on the
released quasi-identifiers, linkage keys); then every other type is streamed from
storage, pseudonymized, and written one line per resource, leaving out what the Release
does not release (the resources of suppressed patients). Files are hashed as they are
written and the manifest (counts, hashes, k-anonymity report, l-diversity of diagnoses,
rules hash) is signed with Ed25519.
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
from fhir_server.deid.kanonymity import l_diversity
from fhir_server.deid.linkage import LinkageStore
from fhir_server.deid.release import Release, compute
from fhir_server.deid.signing import MANIFEST, sign
from fhir_server.deid.views import ViewStore, pseudonymized
from fhir_server.rights.withholding import Withholding
from fhir_server.service.fhir import FhirService
from fhir_server.storage.base import StoredResource, instant
from fhir_server.storage.private_files import private_folder

FORMAT = "diatabase-deid-export/1"
CHUNK = 1000  # lines written, hashed and reported as progress together
DIAGNOSIS_TYPE = "Condition"


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
    linkage: LinkageStore | None = None,
) -> dict[str, Any]:
    """Write the extract into `out_dir` (created) and return the signed manifest. With the
    recipient's view store (`views`, usable: made with this engine's keys and rules), the
    rows made from current versions are copied and only the others pseudonymized: the
    same bytes, without the engine's work. `linkage`: the stored linkage keys, for a
    recipient allowed linkage."""
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
    patients: list[tuple[StoredResource, bytes]] = []
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
                    patients.append((stored, body))
            progress(len(batch))
    release = compute(engine, patients, linkage)
    diagnoses: dict[str, set[str]] = {}

    output = []
    skipped = [0]  # resources left out with their suppressed patient
    for rtype, _ in sorted(counts.items()):
        path = folder / f"{rtype}.ndjson"
        digest, written, size = hashlib.sha256(), 0, 0
        with path.open("wb") as handle:
            if rtype == "Patient":
                lines = _released(release, rtype, (body for _, body in patients), skipped)
            else:
                bodies = _lines(service, engine, views, rtype, progress)
                lines = _released(release, rtype, bodies, skipped)
            if rtype == DIAGNOSIS_TYPE:
                lines = _diagnoses(lines, diagnoses, rules.diversity_prefix)
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
    sensitive = {p: ",".join(sorted(codes)) for p, codes in diagnoses.items()}
    manifest = {
        "format": FORMAT,
        "recipient": engine.keys.recipient_id,
        "transactionTime": instant(started),
        "rules": {"name": rules.name, "sha256": hashlib.sha256(rules.source).hexdigest()},
        "output": output,
        "kAnonymity": release.report.to_json(),
        "lDiversity": {
            "attribute": "diagnosis",
            "codePrefix": rules.diversity_prefix,
            **l_diversity(release.classes, sensitive),
        },
        "linkageKeys": len(release.linkage),
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
    progress: Callable[[int], None],
) -> Iterator[bytes | None]:
    for batch in _batches(service.storage.iter_current(rtype)):
        progress(len(batch))
        yield from _bodies(engine, views, batch)


def _released(
    release: Release, rtype: str, bodies: Iterable[bytes | None], skipped: list[int]
) -> Iterator[bytes | None]:
    """Bodies as the recipient's Release lets them out; what it holds back is counted in
    `skipped`, what the rules suppressed (None) passes on as None."""
    for body in bodies:
        if body is None:
            yield None
            continue
        released = release.body(rtype, body)
        if released is None:
            skipped[0] += 1
        else:
            yield released


def _diagnoses(
    lines: Iterable[bytes | None], found: dict[str, set[str]], prefix: int
) -> Iterator[bytes | None]:
    """Pass Condition lines on, noting each patient's diagnosis codes (cut to `prefix`
    characters: ICD-10 categories) for the l-diversity report."""
    for line in lines:
        if line is not None:
            condition = orjson.loads(line)
            ref = (condition.get("subject") or {}).get("reference", "")
            if isinstance(ref, str) and ref.startswith("Patient/"):
                codes = found.setdefault(ref[8:], set())
                for coding in (condition.get("code") or {}).get("coding") or ():
                    if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                        codes.add(coding["code"][:prefix])
        yield line


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
