"""`diatabase export` and `diatabase import-ndjson` on real SQLite files: an export read back
into an empty database gives the same resources; rejected lines are reported one
OperationOutcome each; Patient and Group level from the command line."""

from __future__ import annotations

import json
from pathlib import Path

from fhir_server.cli import main
from tests.test_bulk_export import population


def write_ndjson(path: Path, resources: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in resources), encoding="utf-8")
    return path


def read_folder(folder: Path) -> dict[str, dict]:
    manifest = json.loads((folder / "manifest.json").read_text())
    found = {}
    for item in manifest["output"]:
        lines = (folder / item["file"]).read_text().splitlines()
        assert len(lines) == item["count"]
        for line in lines:
            resource = json.loads(line)
            found[f"{resource['resourceType']}/{resource['id']}"] = resource
    return found


def test_export_and_import_round_trip(tmp_path: Path, capsys) -> None:
    source, target = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    data = write_ndjson(tmp_path / "data.ndjson", population())
    assert main(["import-ndjson", str(data), "--db", source, "--quiet"]) == 0
    out = tmp_path / "out"
    types = "Patient,Observation,Condition,Practitioner"
    assert main(["export", "--out", str(out), "--db", source, "--type", types, "--quiet"]) == 0
    exported = read_folder(out)
    assert sorted(exported) == sorted(f"{r['resourceType']}/{r['id']}" for r in population())
    files = sorted(str(p) for p in out.glob("*.ndjson"))
    assert main(["import-ndjson", *files, "--db", target, "--quiet"]) == 0
    again = tmp_path / "again"
    assert main(["export", "--out", str(again), "--db", target, "--type", types,
                 "--quiet"]) == 0
    reread = read_folder(again)
    strip = ("versionId", "lastUpdated")
    for key, resource in exported.items():
        other = reread[key]
        assert {k: v for k, v in resource.items() if k != "meta"} == \
            {k: v for k, v in other.items() if k != "meta"}
        assert {k: v for k, v in resource["meta"].items() if k not in strip} == \
            {k: v for k, v in other["meta"].items() if k not in strip}
    one = tmp_path / "one"
    assert main(["export", "--out", str(one), "--db", source, "--patient", "p1",
                 "--quiet"]) == 0
    assert sorted(read_folder(one)) == ["Condition/p1-t2d", "Observation/p1-a1c",
                                        "Observation/p1-glu", "Patient/p1"]
    assert "Exported 4 resources" in capsys.readouterr().out


def test_rejected_lines_go_to_the_error_file(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'c.db'}"
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"resourceType": "Patient", "id": "ok"}\n{oops\n'
                   '{"resourceType": "Observation", "id": "no-status", "code": {}}\n')
    errors = tmp_path / "errors.ndjson"
    assert main(["import-ndjson", str(bad), "--db", db, "--errors", str(errors),
                 "--quiet"]) == 1
    outcomes = [json.loads(line) for line in errors.read_text().splitlines()]
    assert [o["resourceType"] for o in outcomes] == ["OperationOutcome"] * 2
    assert f"{bad} line 2" in outcomes[0]["issue"][0]["diagnostics"]
    assert f"{bad} line 3" in outcomes[1]["issue"][0]["diagnostics"]
