"""The operator's terminology data directory (env DIATABASE_TERMINOLOGY_DIR).

`diatabase terminology load` parses a full table once and writes it here as gzipped JSON
(`cim10.json.gz`, `atc.json.gz`); the service reads these files at start instead of the
subsets shipped in the package. The files hold licensed content: they stay on the
operator's machine and are never committed.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from terminology.codesystem import CodeSystemData, Concept
from terminology.errors import invalid

ENV_VAR = "DIATABASE_TERMINOLOGY_DIR"
FILE_NAMES = {"cim10": "cim10.json.gz", "atc": "atc.json.gz"}
FORMAT = "diatabase-codesystem-1"


def data_dir_from_env() -> Path | None:
    value = os.environ.get(ENV_VAR)
    return Path(value) if value else None


def save(system: CodeSystemData, directory: Path, kind: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FILE_NAMES[kind]
    payload = {
        "format": FORMAT,
        "url": system.url,
        "version": system.version,
        "content": system.content,
        "source": system.source_note,
        "concepts": [
            {
                "code": c.code,
                "display": c.display,
                "designations": c.designations,
                "parent": c.parent,
                "status": c.status,
                "properties": c.properties,
            }
            for c in system
        ],
    }
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as handle:
        json.dump(payload, handle, ensure_ascii=False, separators=(",", ":"))
    tmp.replace(path)  # readers never see a half-written file
    return path


def _read(path: Path, url: str) -> dict:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            payload = json.load(handle)
    except (OSError, ValueError) as exc:
        raise invalid(f"cannot read terminology file {path}: {exc}") from exc
    if payload.get("format") != FORMAT or payload.get("url") != url:
        raise invalid(f"{path} is not a saved table of {url}")
    return payload


def _concept(item: dict) -> Concept:
    return Concept(
        code=item["code"],
        display=item["display"],
        designations=dict(item.get("designations") or {}),
        parent=item.get("parent"),
        status=item.get("status", "active"),
        properties=dict(item.get("properties") or {}),
    )


def load_into(system: CodeSystemData, path: Path) -> CodeSystemData:
    """Fill an empty CodeSystemData (url, name and title already set) from a saved file."""
    payload = _read(path, system.url)
    system.version = payload.get("version")
    system.content = payload.get("content", "complete")
    system.source_note = payload.get("source")
    for item in payload["concepts"]:
        system.add(_concept(item))
    return system.finalize()


def saved_concepts(path: Path, url: str) -> tuple[list[Concept], str | None]:
    """The concepts of a saved table and its version, to merge into another system."""
    payload = _read(path, url)
    return [_concept(item) for item in payload["concepts"]], payload.get("version")
