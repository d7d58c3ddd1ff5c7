"""Same seed and parameters give the same bytes; the dict stream and the files agree."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import orjson

from fhir_server.synthetic import generate, write_ndjson


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.ndjson"))}


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    first = write_ndjson(tmp_path / "a", patients=12, days=3, seed=5)
    second = write_ndjson(tmp_path / "b", patients=12, days=3, seed=5)
    assert first == second
    assert first["Observation"] > 1000  # CGM readings are there
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    write_ndjson(tmp_path / "a", patients=12, days=3, seed=5)
    write_ndjson(tmp_path / "b", patients=12, days=3, seed=6)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a["Patient.ndjson"] != b["Patient.ndjson"]
    assert a["Observation.ndjson"] != b["Observation.ndjson"]


def test_end_date_moves_the_window(tmp_path: Path) -> None:
    write_ndjson(tmp_path / "a", patients=3, days=2, seed=5, end_date=date(2024, 6, 30))
    lines = (tmp_path / "a" / "Observation.ndjson").read_bytes().splitlines()
    stamps = {orjson.loads(line)["effectiveDateTime"][:10] for line in lines}
    assert stamps <= {"2024-06-28", "2024-06-29", "2024-06-30", "2024-07-01"}
    assert "2024-06-30" in stamps


def test_files_hold_exactly_the_generated_dicts(tmp_path: Path) -> None:
    counts = write_ndjson(tmp_path, patients=10, days=2, seed=11)
    expected: dict[str, list[bytes]] = {}
    for resource in generate(10, 2, 11):
        expected.setdefault(resource["resourceType"], []).append(orjson.dumps(resource))
    assert counts == {t: len(v) for t, v in sorted(expected.items())}
    for resource_type, lines in expected.items():
        written = (tmp_path / f"{resource_type}.ndjson").read_bytes()
        assert written == b"\n".join(lines) + b"\n", resource_type


def test_a_patient_does_not_depend_on_population_size() -> None:
    small = [r for r in generate(3, 2, 9) if r["resourceType"] == "Patient"]
    large = [r for r in generate(6, 2, 9) if r["resourceType"] == "Patient"][:3]
    assert small == large
