"""Operator rules that require profiles, their settings, and the service-level switches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhir_server.model.outcome import FhirError
from fhir_server.service.fhir import FhirService
from fhir_server.settings import Settings
from fhir_server.storage import open_storage
from profiles import (
    BLOOD_GLUCOSE,
    CGM_SENSOR_READING,
    HBA1C,
    ProfileRule,
    RequiredProfiles,
    RuleError,
    rules_from_setting,
)
from terminology import TerminologyService
from tests.profile_examples import cgm_reading, glucose, hba1c

GLUCOSE_VS = "https://diatabase.org/fhir/ValueSet/glucose-codes"


@pytest.fixture(scope="module")
def terminology() -> TerminologyService:
    return TerminologyService()


def test_rule_forms(terminology: TerminologyService) -> None:
    rules = RequiredProfiles.from_pairs(
        [
            (f"Observation?code:in={GLUCOSE_VS}", BLOOD_GLUCOSE),
            ("Observation?code=http://loinc.org|99504-3", CGM_SENSOR_READING),
            ("Observation?code=4548-4", HBA1C),
            ("Patient", "https://diatabase.org/fhir/StructureDefinition/DiabetesPatient"),
        ],
        terminology,
    )
    assert rules.profiles_for(glucose()) == [BLOOD_GLUCOSE]
    assert rules.profiles_for(cgm_reading()) == [BLOOD_GLUCOSE, CGM_SENSOR_READING]
    assert rules.profiles_for(hba1c()) == [HBA1C]
    assert rules.profiles_for({"resourceType": "Observation", "status": "final"}) == []
    assert rules.profiles_for({"resourceType": "Patient"}) == [
        "https://diatabase.org/fhir/StructureDefinition/DiabetesPatient"
    ]
    assert rules.profiles_for({"resourceType": "Condition"}) == []


@pytest.mark.parametrize(
    "criteria",
    ["observation", "Observation?status=final", "Observation?code:in=", "", "Obs ervation"],
)
def test_bad_rules_are_refused(criteria: str) -> None:
    with pytest.raises(RuleError):
        ProfileRule.parse(criteria, BLOOD_GLUCOSE)


def test_rules_from_setting_inline_and_file(tmp_path: Path) -> None:
    rules = [{"criteria": f"Observation?code:in={GLUCOSE_VS}", "profile": BLOOD_GLUCOSE}]
    expected = ((f"Observation?code:in={GLUCOSE_VS}", BLOOD_GLUCOSE),)
    assert rules_from_setting(json.dumps(rules)) == expected
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules))
    assert rules_from_setting(str(path)) == expected
    assert rules_from_setting("  ") == ()
    with pytest.raises(RuleError):
        rules_from_setting(str(tmp_path / "missing.json"))
    with pytest.raises(RuleError):
        rules_from_setting('[{"criteria": "Observation"}]')
    with pytest.raises(RuleError):
        rules_from_setting("[not json")


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    rules = [{"criteria": "Observation?code=http://loinc.org|4548-4", "profile": HBA1C}]
    monkeypatch.setenv("DIATABASE_REQUIRE_PROFILES", json.dumps(rules))
    monkeypatch.setenv("DIATABASE_VALIDATE_PROFILES", "0")
    monkeypatch.setenv("DIATABASE_UNKNOWN_PROFILES", "reject")
    settings = Settings.from_env()
    assert settings.require_profiles == (("Observation?code=http://loinc.org|4548-4", HBA1C),)
    assert settings.validate_profiles is False
    assert settings.unknown_profiles == "reject"
    monkeypatch.delenv("DIATABASE_REQUIRE_PROFILES")
    monkeypatch.delenv("DIATABASE_VALIDATE_PROFILES")
    monkeypatch.delenv("DIATABASE_UNKNOWN_PROFILES")
    defaults = Settings.from_env()
    assert (defaults.require_profiles, defaults.validate_profiles) == ((), True)
    assert defaults.unknown_profiles == "warn"
    monkeypatch.setenv("DIATABASE_UNKNOWN_PROFILES", "rejct")
    with pytest.raises(ValueError, match="'warn' or 'reject'"):
        Settings.from_env()


def service(tmp_path: Path, terminology: TerminologyService, **settings: object) -> FhirService:
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    return FhirService(open_storage(db), Settings(db_url=db, **settings))


def test_enforcement_can_be_turned_off(tmp_path: Path, terminology: TerminologyService) -> None:
    svc = service(tmp_path, terminology, validate_profiles=False)
    try:
        result = svc.resources.create("Observation", glucose(1800, "mg/dL", "2339-0"))
        assert result.status == 201
        # $validate still checks the claimed profile
        issues = svc.validate_resource(glucose(1800, "mg/dL", "2339-0"))
        assert {i.code for i in issues} == {"processing", "business-rule"}
    finally:
        svc.storage.close()


def test_unknown_foreign_profile_can_be_rejected(
    tmp_path: Path, terminology: TerminologyService
) -> None:
    foreign = glucose()
    foreign["meta"]["profile"] = ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-x"]
    svc = service(tmp_path, terminology, unknown_profiles="reject")
    try:
        with pytest.raises(FhirError) as refused:
            svc.resources.create("Observation", foreign)
        assert refused.value.status == 422
        assert [i.severity for i in svc.validate_resource(glucose())] == []
    finally:
        svc.storage.close()
    (tmp_path / "warn").mkdir()
    lenient = service(tmp_path / "warn", terminology)
    try:
        assert lenient.resources.create("Observation", foreign).status == 201
        warnings = lenient.validate_resource(foreign)
        assert [(i.severity, i.code) for i in warnings] == [("warning", "not-supported")]
    finally:
        lenient.storage.close()


def test_rule_with_an_unknown_profile_fails_at_start(
    tmp_path: Path, terminology: TerminologyService
) -> None:
    with pytest.raises(RuleError, match="BloodGlucos, which is not loaded"):
        service(tmp_path, terminology,
                require_profiles=(("Observation", "https://diatabase.org/fhir/x/BloodGlucos"),))


def test_publishing_twice_adds_no_version(tmp_path: Path, terminology: TerminologyService) -> None:
    from fhir_server.app import publish_conformance_resources

    svc = service(tmp_path, terminology)
    try:
        publish_conformance_resources(svc)
        publish_conformance_resources(svc)
        stored = svc.resources.read("StructureDefinition", "BloodGlucose")
        assert stored.version == 1
        assert svc.resources.read("SearchParameter", "Patient-ins").version == 1
    finally:
        svc.storage.close()
