"""Stage 2 of the linkage keys, run by the trusted third party (not the warehouse).

`diatabase deid linkage answer --in request.ndjson --out answer.ndjson`, on the third
party's machine, with its own secret in DIATABASE_LINKAGE_TTP_SECRET (never the
warehouse's). Each request line `{"project": ID, "stage1": HEX}` is answered with
`{"project", "stage1", "key"}`, key = HMAC-SHA-256(TTP secret, project + NUL + stage-1).
This module needs nothing of the warehouse: no database, no master secret, no patient data
(a stage-1 value is already a keyed one-way hash of the traits).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

TTP_SECRET_ENV = "DIATABASE_LINKAGE_TTP_SECRET"
MIN_SECRET_BYTES = 32
_HEX64 = re.compile(r"[0-9a-f]{64}")
_PROJECT = re.compile(r"[A-Za-z0-9\-.]{1,64}")


class LinkageError(ValueError):
    pass


def ttp_secret(value: str | None = None) -> bytes:
    secret = value if value is not None else os.environ.get(TTP_SECRET_ENV, "")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise LinkageError(f"{TTP_SECRET_ENV} must hold at least {MIN_SECRET_BYTES} bytes")
    return secret.encode()


def stage2(secret: bytes, project: str, stage1_value: str) -> str:
    return hmac.new(secret, f"{project}\0{stage1_value}".encode(), hashlib.sha256).hexdigest()


def answer(secret: bytes, requests: Iterable[dict[str, Any]]) -> Iterator[dict[str, str]]:
    for number, request in enumerate(requests, 1):
        project, value = request.get("project"), request.get("stage1")
        if not isinstance(project, str) or not _PROJECT.fullmatch(project):
            raise LinkageError(f"line {number}: `project` must match [A-Za-z0-9-.]{{1,64}}")
        if not isinstance(value, str) or not _HEX64.fullmatch(value):
            raise LinkageError(f"line {number}: `stage1` must be 64 lowercase hex digits")
        yield {"project": project, "stage1": value, "key": stage2(secret, project, value)}
