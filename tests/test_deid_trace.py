"""Leak tracing among 20 recipients, and the deid CLI (export, verify, trace)."""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_server.cli import main
from fhir_server.deid.engine import Deidentifier
from fhir_server.deid.keys import RecipientKeys
from fhir_server.deid.rules import load_rules
from fhir_server.deid.trace import trace
from fhir_server.deid.watermark import log10_tail
from fhir_server.ingest.loader import Loader
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage
from tests.deid_data import french_patients

MASTER = b"trace-test-master-secret-000000"
RECIPIENTS = [f"project-{n:02d}" for n in range(20)]


@pytest.fixture(scope="module")
def originals() -> list[dict[str, Any]]:
    return french_patients(count=25, readings=30)


@pytest.fixture(scope="module")
def keys() -> list[RecipientKeys]:
    return [RecipientKeys.derive(MASTER, r) for r in RECIPIENTS]


def extract(recipient: RecipientKeys, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    engine = Deidentifier(recipient, load_rules())
    return [orjson.loads(engine.transform_bytes(orjson.dumps(r))) for r in resources]


def strip(resource: dict[str, Any]) -> dict[str, Any]:
    """What a careful leaker removes: ids, identifiers, references, meta."""
    cleaned = {k: v for k, v in resource.items() if k not in ("id", "identifier", "meta")}
    for key in ("subject", "device", "patient"):
        cleaned.pop(key, None)
    return cleaned


def ndjson(resources: list[dict[str, Any]]) -> str:
    return "\n".join(json.dumps(r) for r in resources)


@pytest.mark.parametrize("seed", [1, 2])
def test_stripped_shuffled_subsets_of_500_name_the_right_recipient_among_20(
    originals: list[dict[str, Any]], keys: list[RecipientKeys], seed: int
) -> None:
    rnd = random.Random(seed)
    for recipient in keys:
        leaked = [strip(r) for r in rnd.sample(extract(recipient, originals), 500)]
        rnd.shuffle(leaked)
        text = ndjson(leaked)
        assert recipient.recipient_id not in text
        report = trace(text, keys)
        assert report.recipient == recipient.recipient_id
        assert report.method == "watermark"
        assert report.false_attribution_probability < 1e-9
        others = [s for s in report.scores if s.recipient != recipient.recipient_id]
        assert max(s.watermark_matches for s in others) < report.carriers / 5


def test_an_extract_is_never_attributed_to_a_recipient_who_did_not_receive_it(
    originals: list[dict[str, Any]], keys: list[RecipientKeys]
) -> None:
    for recipient in keys[:5]:
        leaked = ndjson([strip(r) for r in extract(recipient, originals)[:500]])
        others = [k for k in keys if k.recipient_id != recipient.recipient_id]
        report = trace(leaked, others)
        assert report.recipient is None
        assert report.false_attribution_probability == 1.0


def test_pseudonyms_name_the_recipient_with_certainty(
    originals: list[dict[str, Any]], keys: list[RecipientKeys]
) -> None:
    leaked = extract(keys[7], originals[:40])
    for resource in leaked:  # even with every timestamp removed
        resource.pop("effectiveDateTime", None)
        resource.pop("onsetDateTime", None)
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in leaked],
    }
    report = trace(json.dumps(bundle), keys)
    assert report.recipient == keys[7].recipient_id and report.method == "pseudonyms"
    decrypted = {s.recipient: s.pseudonyms_decrypted for s in report.scores}
    assert decrypted[keys[7].recipient_id] > 0
    assert sum(decrypted.values()) == decrypted[keys[7].recipient_id]


def test_too_little_evidence_names_nobody(keys: list[RecipientKeys]) -> None:
    text = '{"resourceType":"Observation","effectiveDateTime":"2024-01-01T10:00:17+01:00"}'
    assert trace(text, keys).recipient is None
    assert trace("", keys).recipient is None


def test_binomial_tail() -> None:
    assert log10_tail(10, 0) == 0.0
    assert log10_tail(10, 11) == float("-inf")
    assert log10_tail(1, 1) == pytest.approx(-1.778, abs=1e-3)  # 1/60
    assert log10_tail(500, 500) < -800


# -- the CLI -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded_db(tmp_path_factory: pytest.TempPathFactory, originals: list[dict[str, Any]]) -> str:
    folder = tmp_path_factory.mktemp("deid-cli")
    url = f"sqlite:///{folder / 'db.sqlite'}"
    settings = Settings(db_url=url)
    service = FhirService(open_storage(url), settings)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in originals
        ],
    }
    (folder / "bundle.json").write_text(json.dumps(bundle))
    report = Loader(service).load_files([folder / "bundle.json"])
    service.storage.close()
    assert not report.failed
    recipients = [
        {
            "id": rid,
            "api_key_sha256": hashlib.sha256(rid.encode()).hexdigest(),
            "parameters": {"kAnonymity": {"k": 2}},
        }
        for rid in RECIPIENTS
    ]
    (folder / "recipients.json").write_text(json.dumps(recipients))
    return url


def test_cli_export_verify_and_trace(
    loaded_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("DIATABASE_DEID_SECRET", MASTER.decode())
    recipients_file = str(Path(loaded_db.removeprefix("sqlite:///")).parent / "recipients.json")
    out = tmp_path / "export"
    code = main(
        [
            "deid",
            "export",
            "--recipient",
            "project-03",
            "--out",
            str(out),
            "--db",
            loaded_db,
            "--recipients",
            recipients_file,
            "--quiet",
        ]
    )
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    files = sorted(p.name for p in out.glob("*.ndjson"))
    assert files == sorted(o["file"] for o in manifest["output"])
    assert {"Patient.ndjson", "Observation.ndjson", "Device.ndjson"} <= set(files)
    assert manifest["kAnonymity"]["k"] == 2
    capsys.readouterr()

    assert main(["deid", "verify", str(out)]) == 0
    assert "OK" in capsys.readouterr().out

    assert main(["deid", "trace", str(out), "--recipients", recipients_file]) == 0
    assert "project-03 (by pseudonyms" in capsys.readouterr().out

    # A stripped, shuffled excerpt still names project-03, through the watermark.
    lines = (out / "Observation.ndjson").read_text().splitlines()
    excerpt = [strip(json.loads(line)) for line in random.Random(5).sample(lines, 300)]
    leak = tmp_path / "leak.ndjson"
    leak.write_text(ndjson(excerpt))
    assert main(["deid", "trace", str(leak), "--recipients", recipients_file, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["recipient"] == "project-03" and report["method"] == "watermark"

    # One changed byte, in any file, is detected.
    for name in files:
        path = out / name
        original = path.read_bytes()
        position = len(original) // 2
        changed = bytearray(original)
        changed[position] = (changed[position] + 1) % 256 or 1
        path.write_bytes(bytes(changed))
        assert main(["deid", "verify", str(out)]) == 1
        assert f"{name}: SHA-256 differs" in capsys.readouterr().err
        path.write_bytes(original)
    assert main(["deid", "verify", str(out)]) == 0
    capsys.readouterr()

    # A manifest edited (even re-hashed) without the key fails the signature.
    manifest["output"][0]["count"] += 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["deid", "verify", str(out)]) == 1
    assert "signature" in capsys.readouterr().err

    # Another master secret is another key: nothing verifies.
    monkeypatch.setenv("DIATABASE_DEID_SECRET", "another-secret-of-enough-length")
    assert main(["deid", "verify", str(out)]) == 1


_SECONDS = re.compile(r"(T\d{2}:\d{2}):\d{2}(?:\.\d+)?")


def truncate_to_minute(line: str) -> str:
    """What a leaker does to erase the seconds: every timestamp ends at :00."""
    return _SECONDS.sub(r"\1:00", line)


def strip_all(resource: dict[str, Any]) -> dict[str, Any]:
    """strip(), and every reference anywhere: nothing of a pseudonym is left."""
    text = truncate_to_minute(json.dumps(strip(resource)))
    return json.loads(re.sub(r'"reference": "[^"]*"', '"reference": "x"', text))


@pytest.mark.parametrize("seed", range(20))
def test_trace_names_the_recipient_of_300_readings_stripped_and_cut_to_the_minute(
    loaded_db: str,
    originals: list[dict[str, Any]],
    keys: list[RecipientKeys],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    seed: int,
) -> None:
    """The seconds watermark is gone (every timestamp ends at :00), ids and references
    too; the values' watermark still names the one recipient among 20, below 1e-6, and
    an extract is never attributed to anyone else (nor to anybody once its recipient is
    not among those tried)."""
    monkeypatch.setenv("DIATABASE_DEID_SECRET", MASTER.decode())
    recipients_file = Path(loaded_db.removeprefix("sqlite:///")).parent / "recipients.json"
    rnd = random.Random(seed)
    recipient = keys[rnd.randrange(len(keys))]
    readings = [
        r
        for r in extract(recipient, originals)
        if r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == "99504-3"
    ]
    leaked = [strip_all(r) for r in rnd.sample(readings, 300)]
    assert all(r["effectiveDateTime"][17:19] == "00" for r in leaked)
    leak = tmp_path / "leak.ndjson"
    leak.write_text(ndjson(leaked))
    assert recipient.recipient_id not in leak.read_text()
    capsys.readouterr()
    assert main(["deid", "trace", str(leak), "--recipients", str(recipients_file), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["recipient"] == recipient.recipient_id and report["method"] == "watermark"
    assert report["falseAttributionProbability"] < 1e-6
    assert report["valueCarriers"] >= 250
    others = [k for k in keys if k.recipient_id != recipient.recipient_id]
    assert trace(leak.read_text(), others).recipient is None


def test_cli_needs_the_secret(
    loaded_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DIATABASE_DEID_SECRET", raising=False)
    with pytest.raises(SystemExit, match="DIATABASE_DEID_SECRET"):
        main(["deid", "verify", str(tmp_path)])
