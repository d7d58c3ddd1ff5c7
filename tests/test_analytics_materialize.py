"""`diatabase views materialize`: Parquet files and an embedded DuckDB database written
from a real SQLite store, then kept up to date from its history (an update, a deletion
and a create are seen; nothing else is read again); a research recipient's tables hold
pseudonyms only; and Spark (pyspark, local mode) reads the Parquet files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from fhir_server.analytics.materialize import FacadeSource, Materializer, StoreSource
from fhir_server.cli import main
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage
from tests.deid_data import french_patients, secrets_of, write_recipients

VIEW: dict[str, Any] = {
    "resourceType": "ViewDefinition",
    "name": "glucose",
    "status": "active",
    "resource": "Observation",
    "select": [{"column": [
        {"name": "id", "path": "getResourceKey()"},
        {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
        {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"},
        {"name": "effective", "path": "effective.ofType(dateTime)", "type": "dateTime"},
    ]}],
}  # fmt: skip


@pytest.fixture()
def store(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'clinical.db'}"
    service = FhirService(open_storage(url), Settings(db_url=url))
    resources = french_patients(count=4, readings=10)
    for resource in resources:
        service.resources.update(resource["resourceType"], resource["id"], resource)
    yield url, service, resources
    service.storage.close()


def _table(folder: Path, materializer: Materializer | None = None) -> dict[str, float]:
    if materializer is not None:  # DuckDB: one configuration per file in a process
        return dict(materializer.db.execute("SELECT id, value FROM glucose").fetchall())
    with duckdb.connect(str(folder / "views.duckdb"), read_only=True) as db:
        return dict(db.execute("SELECT id, value FROM glucose").fetchall())


def test_materialize_then_update_from_history(store: Any, tmp_path: Path) -> None:
    url, service, resources = store
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    out = tmp_path / "views"
    # no margin: nothing else writes meanwhile, so exactly what changed is read again
    materializer = Materializer(out, StoreSource(service.storage), margin_seconds=0)
    first = materializer.materialize(VIEW)
    n = len(observations)
    assert (first.mode, first.rows, first.changed_resources) == ("full", n, n)
    assert _table(out, materializer) == {
        o["id"]: o["valueQuantity"].get("value") for o in observations
    }

    again = materializer.materialize(VIEW)
    assert (again.mode, again.rows) == ("unchanged", n)

    changed = dict(
        observations[0], valueQuantity={**observations[0]["valueQuantity"], "value": 999}
    )
    service.resources.update("Observation", changed["id"], changed)
    service.resources.delete("Observation", observations[1]["id"])
    added = dict(observations[2], id="added-reading")
    service.resources.update("Observation", "added-reading", added)
    update = materializer.materialize(VIEW)
    materializer.close()
    assert update.mode == "incremental" and update.changed_resources == 3
    expected = {o["id"]: o["valueQuantity"]["value"] for o in observations[2:]}
    expected |= {changed["id"]: 999, "added-reading": added["valueQuantity"]["value"]}
    assert _table(out) == expected
    parquet = pq.read_table(out / "glucose.parquet")
    assert dict(zip(parquet["id"].to_pylist(), parquet["value"].to_pylist(), strict=True)) == (
        expected
    )
    assert "_resource_key" in parquet.column_names


def test_the_command_and_a_recipient_sees_pseudonyms_only(
    store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--recipient` builds the facade without a job runner (it failed with a TypeError
    once the facade's exports became jobs: `build_deid` gained a runner argument)."""
    url, service, resources = store
    view_file = tmp_path / "glucose.json"
    view_file.write_text(json.dumps(VIEW))
    out = tmp_path / "plain"
    assert main(["views", "materialize", "--db", url, "--out", str(out),
                 "--view", str(view_file)]) == 0  # fmt: skip
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    assert len(_table(out)) == len(observations)

    write_recipients(
        tmp_path / "recipients.json",
        {"research": "research-key-123"},
        {"research": {"kAnonymity": {"k": 1}}},
    )  # a few patients: k = 1
    settings = Settings(db_url=url, deid_secret="materialize-test-secret-0123456789",
                        deid_recipients=str(tmp_path / "recipients.json"))  # fmt: skip
    from fhir_server.deid.context import build_release

    deid = build_release(service, settings)
    engine = deid.recipients.engine("research")
    research = tmp_path / "research"
    done = Materializer(research, FacadeSource(StoreSource(service.storage), deid.facade, engine))
    done.materialize(VIEW)
    done.close()
    secrets = set().union(*(secrets_of(r) for r in resources))
    times = {r["effectiveDateTime"] for r in resources if r["resourceType"] == "Observation"}
    text = json.dumps(pq.read_table(research / "glucose.parquet").to_pylist())
    assert [s for s in secrets if s in text] == []
    assert [t for t in times if t in text] == []
    assert len(_table(research)) == len(observations)

    # An objection to research use changes no Observation, yet its patient's rows must go
    # from the research tables at the next run (they stayed before the source's state was
    # part of the fingerprint); the clinical tables keep them.
    from fhir_server.rights.objections import objection_consent

    objecting = observations[0]["subject"]["reference"].split("/")[1]
    theirs = [o for o in observations if o["subject"]["reference"] == f"Patient/{objecting}"]
    service.resources.update("Consent", "objection-1",
                             {**objection_consent(objecting, "letter", "2026-01-05"),
                              "id": "objection-1"})  # fmt: skip
    again = Materializer(research, FacadeSource(StoreSource(service.storage), deid.facade, engine))
    assert again.materialize(VIEW).mode == "full"
    again.close()
    assert len(_table(research)) == len(observations) - len(theirs)
    clinical = Materializer(out, StoreSource(service.storage))
    assert clinical.materialize(VIEW).mode != "full"
    clinical.close()
    assert len(_table(out)) == len(observations)

    monkeypatch.setenv("DIATABASE_DEID_SECRET", settings.deid_secret)
    by_command = tmp_path / "research-command"
    assert main(["views", "materialize", "--db", url, "--out", str(by_command),
                 "--view", str(view_file), "--recipient", "research",
                 "--deid-recipients", settings.deid_recipients]) == 0  # fmt: skip
    assert _table(by_command) == _table(research)  # the same pseudonyms and values


def _java_available() -> str | None:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no Java runtime (pyspark needs one: apt-get install default-jre-headless)"
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed"
    return None


@pytest.mark.skipif(_java_available() is not None, reason=str(_java_available()))
def test_spark_reads_the_parquet_files(store: Any, tmp_path: Path) -> None:
    """The README's Spark example, in local mode: the same files a cluster would read."""
    from pyspark.sql import SparkSession

    url, service, resources = store
    out = tmp_path / "views"
    materializer = Materializer(out, StoreSource(service.storage))
    materializer.materialize(VIEW)
    materializer.close()
    spark = (SparkSession.builder.master("local[1]").appName("diatabase-test")
             .config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "1").getOrCreate())  # fmt: skip
    try:
        glucose = spark.read.parquet(str(out / "glucose.parquet"))
        per_patient = {row["patient"]: (row["n"], row["mean"]) for row in glucose.groupBy(
            "patient").agg({"id": "count", "value": "avg"}).withColumnsRenamed(
            {"count(id)": "n", "avg(value)": "mean"}).collect()}  # fmt: skip
    finally:
        spark.stop()
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    for patient, (n, mean) in per_patient.items():
        values = [o["valueQuantity"]["value"] for o in observations
                  if o["subject"]["reference"] == f"Patient/{patient}"
                  and "valueQuantity" in o]  # fmt: skip
        assert n == len(values) and mean == pytest.approx(sum(values) / len(values))
    assert len(per_patient) == 4
