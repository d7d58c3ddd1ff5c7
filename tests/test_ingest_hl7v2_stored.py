"""What an AA acknowledges is stored: VXU^V04 as Immunization, ADT^A40 as a Patient merge,
and partly mapped messages say so in the ACK. A real listener storing into the database of
a real server on 127.0.0.1, the result read back over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer
from tests.test_hl7v2_vxu_merge import vxu
from tests.test_ingest_mllp import Listener, segment, total

DATA = Path(__file__).parent / "data" / "hl7v2"
CHU = "CHU&1.2.250.1.999.9&ISO"
CHU_SYSTEM = "urn:oid:1.2.250.1.999.9"


@pytest.fixture(scope="module")
def listener(server: RunningServer) -> Iterator[Listener]:
    running = Listener(server.app.state.settings.db_url, timezone="Europe/Paris")
    yield running
    running.close()


def adt(event: str, control: str, pid: str, *more: str) -> str:
    return "\r".join([
        f"MSH|^~\\&|ADT|CHU^1.2.250.1.999.9^ISO|DIA|DIA|20240501101500+0200||ADT^{event}|"
        f"{control}|P|2.5",
        f"EVN|{event}|20240501101500",
        f"PID|1||{pid}^^^{CHU}^PI||DURAND^ALICE||19800101|F",
        *more,
    ])


def oru(control: str, pid: str, order: str, value: str) -> str:
    return "\r".join([
        f"MSH|^~\\&|LAB|CHU^1.2.250.1.999.9^ISO|DIA|DIA|20240501101500+0200||ORU^R01|"
        f"{control}|P|2.5",
        f"PID|1||{pid}^^^{CHU}^PI||DURAND^ALICE",
        f"OBR|1||{order}^LAB|2339-0^Glucose^LN",
        f"OBX|1|NM|2339-0^Glucose^LN||{value}|mg/dL|70-110|N|||F|||20240501080000",
    ])


def one(client: httpx.Client, path: str, **params: str) -> dict:
    bundle = client.get(path, params=params).json()
    assert len(bundle.get("entry", [])) == 1, bundle
    return bundle["entry"][0]["resource"]


def test_vxu_is_stored_as_an_immunization(listener: Listener, client: httpx.Client) -> None:
    """Fails on the old code: the ACK said AA and no Immunization was stored."""
    ack = listener.send(vxu(control="VXU-STORE"))
    assert segment(ack, "MSA")[1:3] == ["AA", "VXU-STORE"]
    assert "\rERR" not in ack
    patient = one(client, "/Patient", identifier="urn:oid:1.2.250.1.999.7|PAT-77")
    immunization = one(client, "/Immunization", patient=f"Patient/{patient['id']}")
    assert immunization["vaccineCode"]["coding"][0]["code"] == "08"
    assert immunization["status"] == "completed"
    observation = one(client, "/Observation", subject=f"Patient/{patient['id']}")
    assert observation["partOf"] == [{"reference": f"Immunization/{immunization['id']}"}]
    # A re-sent VXU changes nothing.
    assert segment(listener.send(vxu(control="VXU-STORE")), "MSA")[1] == "AA"
    again = one(client, "/Immunization", patient=f"Patient/{patient['id']}")
    assert again["meta"]["versionId"] == immunization["meta"]["versionId"]


def test_a_partly_mapped_real_message_is_acknowledged_with_warnings(
    listener: Listener,
) -> None:
    """Fails on the old code: GT1, IN1, PR1... were dropped under a bare AA."""
    sample = (DATA / "fhir-converter" / "ADT-A01-01.hl7").read_bytes()
    ack = listener.send(sample)
    assert segment(ack, "MSA")[1] == "AA"
    warnings = [line.split("|") for line in ack.split("\r") if line.startswith("ERR")]
    assert {w[4] for w in warnings} == {"W"}
    located = {w[2].split("^")[0] for w in warnings}
    assert {"GT1", "IN1", "PR1"} <= located
    assert not located & {"PID", "PV1", "NK1", "DG1", "AL1", "OBX"}


def test_a40_merges_links_and_keeps_everything_findable(
    listener: Listener, client: httpx.Client
) -> None:
    """Fails on the old code: A40 was stored as an A08 of the survivor and MRG ignored."""
    assert segment(listener.send(adt("A01", "M-1", "OLD-9")), "MSA")[1] == "AA"
    assert segment(listener.send(oru("M-2", "OLD-9", "ORD-OLD", "140")), "MSA")[1] == "AA"
    assert segment(listener.send(adt("A04", "M-3", "NEW-9")), "MSA")[1] == "AA"
    old = one(client, "/Patient", identifier=f"{CHU_SYSTEM}|OLD-9")
    new = one(client, "/Patient", identifier=f"{CHU_SYSTEM}|NEW-9")
    reading = one(client, "/Observation", subject=f"Patient/{old['id']}")

    merge = adt("A40", "M-4", "NEW-9", f"MRG|OLD-9^^^{CHU}^PI")
    ack = listener.send(merge)
    assert segment(ack, "MSA")[1:3] == ["AA", "M-4"]
    assert "\rERR" not in ack

    survivor = client.get(f"/Patient/{new['id']}").json()
    prior = client.get(f"/Patient/{old['id']}").json()
    assert {"other": {"reference": f"Patient/{old['id']}"}, "type": "replaces"} in \
        survivor["link"]
    assert prior["active"] is False
    assert prior["link"] == [{"other": {"reference": f"Patient/{new['id']}"},
                              "type": "replaced-by"}]
    # The old identifier moved to the survivor: a search by it finds the survivor alone.
    found = one(client, "/Patient", identifier=f"{CHU_SYSTEM}|OLD-9")
    assert found["id"] == new["id"]
    assert {"use": "old", "system": CHU_SYSTEM, "value": "OLD-9"}.items() <= next(
        i for i in found["identifier"] if i["value"] == "OLD-9").items()
    # The prior patient's results now belong to the survivor, and stay findable by the
    # old identifier through a chain.
    moved = one(client, "/Observation", subject=f"Patient/{new['id']}")
    assert moved["id"] == reading["id"]
    assert total(client, "/Observation", subject=f"Patient/{old['id']}") == 0
    chained = one(client, "/Observation", **{"subject:Patient.identifier":
                                             f"{CHU_SYSTEM}|OLD-9"})
    assert chained["id"] == reading["id"]
    # The prior record is still readable, and links back: Patient?link= finds the survivor.
    assert one(client, "/Patient", link=f"Patient/{old['id']}")["id"] == new["id"]

    # A re-sent A40 changes nothing; an A08 of the survivor keeps the merge.
    versions = client.get(f"/Patient/{new['id']}").json()["meta"]["versionId"]
    assert segment(listener.send(merge), "MSA")[1] == "AA"
    assert client.get(f"/Patient/{new['id']}").json()["meta"]["versionId"] == versions
    update = adt("A08", "M-5", "NEW-9").replace("DURAND^ALICE", "DURAND^ALICE^MARIE")
    assert segment(listener.send(update), "MSA")[1] == "AA"
    after = client.get(f"/Patient/{new['id']}").json()
    assert after["name"][0]["given"] == ["ALICE", "MARIE"]
    assert after["link"] == survivor["link"]
    assert any(i["value"] == "OLD-9" for i in after["identifier"])
    # A late result still sent under the old identifier lands on the survivor.
    assert segment(listener.send(oru("M-6", "OLD-9", "ORD-LATE", "150")), "MSA")[1] == "AA"
    assert total(client, "/Observation", subject=f"Patient/{new['id']}") == 2


def test_a40_for_an_unknown_prior_patient_is_accepted_with_a_warning(
    listener: Listener, client: httpx.Client
) -> None:
    ack = listener.send(adt("A40", "M-7", "NEW-10", f"MRG|NEVER-SEEN^^^{CHU}^PI"))
    assert segment(ack, "MSA")[1] == "AA"
    err = segment(ack, "ERR")
    assert err[2] == "MRG^1^1" and err[4] == "W"
    assert "nothing merged" in err[8]
    survivor = one(client, "/Patient", identifier=f"{CHU_SYSTEM}|NEW-10")
    assert "link" not in survivor
