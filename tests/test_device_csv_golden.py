"""The device CSV mapper gives exactly the output frozen in tests/data/csv/golden/.

The goldens were written by the mapper before its speed-up (see device_csv_golden_cases.py):
same Bundles, same key order, same rejected and skipped rows, same warnings. A second test
checks that no two resources of a Bundle share a mutable part, since the server's write
path edits resources in place (reference rewriting, meta stamping).
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from mappers.device_csv import to_bundle
from tests.device_csv_golden_cases import (
    GOLDEN,
    PATIENT,
    digest,
    digest_cases,
    full_cases,
    libre_dst_export,
    serialise,
)

FULL = json.loads(gzip.decompress((GOLDEN / "full.json.gz").read_bytes()))
DIGESTS = json.loads((GOLDEN / "digests.json").read_text(encoding="utf-8"))


def test_every_case_has_a_golden() -> None:
    assert sorted(FULL) == sorted(name for name, _ in full_cases())
    assert sorted(DIGESTS) == sorted(name for name, _ in digest_cases())


def test_small_cases_equal_their_golden_outputs() -> None:
    for name, run in full_cases():
        got = json.loads(json.dumps(serialise(run)))
        expected = FULL[name]
        assert got == expected, name
        # == ignores key order; the serialised text does not.
        assert json.dumps(got) == json.dumps(expected), name


@pytest.mark.parametrize(("name", "run"), digest_cases(), ids=lambda v: v if isinstance(v, str)
                         else "")
def test_large_cases_equal_their_golden_digests(name: str, run) -> None:
    out = serialise(run)
    golden = DIGESTS[name]
    counts = [out.get("rows_read"), out.get("readings"), len(out.get("rejected", [])),
              len(out.get("skipped", []))]
    assert counts == golden["counts"], name
    assert digest(out) == golden["sha256"], name


def _containers(value: Any) -> list[Any]:
    found = []
    if isinstance(value, dict):
        found.append(value)
        for item in value.values():
            found.extend(_containers(item))
    elif isinstance(value, list):
        found.append(value)
        for item in value:
            found.extend(_containers(item))
    return found


def test_no_two_entries_share_a_dict_or_list() -> None:
    text = libre_dst_export("Europe/Paris", False, "%d-%m-%Y %H:%M")
    bundle = to_bundle(text, patient=PATIENT, timezone="Europe/Paris").bundle
    seen: dict[int, int] = {}
    for index, entry in enumerate(bundle["entry"]):
        for container in _containers(entry):
            owner = seen.setdefault(id(container), index)
            assert owner == index, f"entries {owner} and {index} share {container!r}"
    # the test can fail: two entries built from one template without copies would share
    assert len(seen) > 10 * len(bundle["entry"])
