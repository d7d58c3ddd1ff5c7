"""`diatabase consent object|withdraw|list` and `diatabase hold set|clear|list` on a real
SQLite database: an objection is a stored Consent (research, OPTOUT, deny) the registry
reads; recording twice stores one; withdrawal makes it inactive; holds persist."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from fhir_server.cli import main
from fhir_server.rights.objections import is_objection


def test_consent_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    source = tmp_path / "p.json"
    source.write_bytes(orjson.dumps({"resourceType": "Patient", "id": "p1", "gender": "male"}))
    assert main(["load", str(source), "--db", db, "--quiet"]) == 0
    assert main(["consent", "object", "p1", "--source", "letter 2026-12-01", "--db", db]) == 0
    assert main(["consent", "object", "p1", "--source", "letter again", "--db", db]) == 0
    capsys.readouterr()
    assert main(["consent", "list", "--db", db]) == 0
    listed = capsys.readouterr().out
    assert "Patient/p1" in listed and "letter 2026-12-01" in listed
    assert "1 objection(s) in force" in listed

    from fhir_server.storage import open_storage

    storage = open_storage(db)
    consents = [orjson.loads(s.json) for s in storage.iter_current("Consent")]
    storage.close()
    assert len(consents) == 1 and is_objection(consents[0])
    assert consents[0]["policyRule"]["coding"][0]["code"] == "OPTOUT"
    assert consents[0]["provision"]["type"] == "deny"

    assert main(["consent", "withdraw", "p1", "--db", db]) == 0
    assert main(["consent", "withdraw", "p1", "--db", db]) == 1  # nothing left to withdraw
    capsys.readouterr()
    main(["consent", "list", "--db", db])
    assert "0 objection(s) in force" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not known"):
        main(["consent", "object", "nobody", "--source", "x", "--db", db])


def test_hold_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'holds.db'}"
    assert main(["hold", "set", "Patient/p1", "--reason", "litigation", "--db", db]) == 0
    capsys.readouterr()
    main(["hold", "list", "--db", db])
    assert "Patient/p1" in capsys.readouterr().out
    assert main(["hold", "clear", "Patient/p1", "--db", db]) == 0
    assert main(["hold", "clear", "Patient/p1", "--db", db]) == 1
    with pytest.raises(SystemExit):
        main(["hold", "set", "nonsense", "--reason", "x", "--db", db])
