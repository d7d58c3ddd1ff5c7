"""Insulin, carbohydrates, exercise and notes from the LibreView and Clarity exports, French
headers and decimal commas; then stored on a real server and found by search, a re-import
creating nothing.

The French LibreView header is the one LibreView writes (as read by public projects); the
rows are synthetic (no real patient data).
"""

from __future__ import annotations

import httpx

from mappers.device_csv import detect_format, to_bundle

PATIENT = "Patient/logged-1"
ATC = "http://www.whocc.no/atc"
UCUM = "http://unitsofmeasure.org"

FRENCH_LIBRE_HEADER = ";".join([
    "Appareil", "Numéro de série", "Horodatage de l'appareil", "Type d'enregistrement",
    "Historique de la glycémie mg/dL", "Numérisation de la glycémie mg/dL",
    "Insuline à action rapide sans valeur numérique", "Insuline à action rapide (unités)",
    "Alimentation sans valeur numérique", "Glucides (grammes)", "Glucides (portions)",
    "Insuline à action longue sans valeur numérique", "Insuline à action longue (unités)",
    "Remarques", "Glycémie par bandelette mg/dL", "Cétone mmol/L", "Insuline repas (unités)",
    "Correction insuline (unités)", "Insuline modifiée par l'utilisateur (unités)",
])
_LIBRE_COLUMNS = ("historic", "scan", "rapid_flag", "rapid", "food_flag", "grams",
                  "servings", "long_flag", "long", "notes", "strip", "ketone")


def libre_row(stamp: str, record_type: str, **cells: str) -> str:
    values = [cells.get(name, "") for name in _LIBRE_COLUMNS]
    return ";".join(["FreeStyle LibreLink", "FR-SENSOR-1", stamp, record_type, *values,
                     "", "", ""])


def french_libre_export() -> bytes:
    """Day-first timestamps around the end of daylight-saving time in Paris (27 Oct 2024)."""
    rows = [
        "Données de glycémie;Généré le;28-10-2024 09:00 UTC;Généré par;test",
        FRENCH_LIBRE_HEADER,
        libre_row("26-10-2024 08:00", "0", historic="101"),
        libre_row("26-10-2024 08:05", "4", rapid="4,5"),
        libre_row("26-10-2024 08:06", "5", grams="45"),
        libre_row("26-10-2024 22:00", "4", long="12"),
        libre_row("26-10-2024 22:01", "4", rapid_flag="1"),
        libre_row("27-10-2024 12:00", "5", servings="2", food_flag="1"),
        libre_row("27-10-2024 12:05", "6", notes="Dîner au restaurant"),
        libre_row("27-10-2024 12:06", "6"),
        libre_row("27-10-2024 12:07", "3", ketone="0,4"),
        libre_row("27-10-2024 12:08", "4", rapid="beaucoup"),
    ]
    return ("\n".join(rows) + "\n").encode("utf-8")


def resources(result, resource_type: str) -> list[dict]:
    return [e["resource"] for e in result.bundle["entry"]
            if e["resource"]["resourceType"] == resource_type]


def events(result) -> list[dict]:
    return [r for e in result.bundle["entry"] for r in [e["resource"]]
            if r.get("identifier", [{}])[0].get("system", "").endswith("/device-event")]


def test_french_libreview_header_is_detected_and_logged_rows_mapped() -> None:
    data = french_libre_export()
    assert detect_format(data) == "freestyle-libre"
    result = to_bundle(data, patient=PATIENT, timezone="Europe/Paris")
    assert result.readings == 2  # historic glucose and ketone
    assert result.events == 6
    assert [(r.row, r.reason) for r in result.skipped] == [
        (10, "record type 6: time change or empty note")]
    assert [r.row for r in result.rejected] == [12]
    assert "not a number" in result.rejected[0].reason

    rapid, long_acting, unrecorded = resources(result, "MedicationAdministration")
    assert rapid["medicationCodeableConcept"]["coding"][0] == {
        "system": ATC, "code": "A10AB",
        "display": "Insulins and analogues for injection, fast-acting"}
    assert rapid["dosage"]["dose"] == {"value": 4.5, "unit": "U", "system": UCUM,
                                       "code": "[IU]"}
    assert rapid["effectiveDateTime"] == "2024-10-26T08:05:00+02:00"  # summer time
    assert rapid["subject"] == {"reference": PATIENT}
    assert rapid["status"] == "completed"
    assert long_acting["medicationCodeableConcept"]["coding"][0]["code"] == "A10AE"
    assert long_acting["dosage"]["dose"]["value"] == 12
    assert "dosage" not in unrecorded  # mad-1: a dosage needs a dose or a rate
    assert unrecorded["note"] == [{"text": "dose logged without a number"}]

    by_code = {o["code"]["coding"][0]["code"]: o for o in events(result)
               if o["resourceType"] == "Observation"}
    carbs = by_code["9059-7"]
    assert carbs["code"]["coding"][0]["system"] == "http://loinc.org"
    assert carbs["valueQuantity"] == {"value": 45, "unit": "g", "system": UCUM, "code": "g"}
    assert carbs["effectiveDateTime"] == "2024-10-26T08:06:00+02:00"
    assert by_code["food"]["valueString"] == "2 serving(s)"
    assert by_code["food"]["effectiveDateTime"] == "2024-10-27T12:00:00+01:00"  # winter time
    assert by_code["note"]["valueString"] == "Dîner au restaurant"
    ketone = next(o for o in resources(result, "Observation")
                  if o["code"]["coding"][0]["code"] == "53060-9")
    assert ketone["valueQuantity"]["value"] == 0.4  # decimal comma


CLARITY_HEADER = [
    "Index", "Timestamp (YYYY-MM-DDThh:mm:ss)", "Event Type", "Event Subtype", "Patient Info",
    "Device Info", "Source Device ID", "Glucose Value (mg/dL)", "Insulin Value (u)",
    "Carb Value (grams)", "Duration (hh:mm:ss)", "Glucose Rate of Change (mg/dL/min)",
    "Transmitter Time (Long Integer)", "Transmitter ID",
]
FRENCH_CLARITY_HEADER = [
    "Index", "Horodatage (AAAA-MM-JJThh:mm:ss)", "Type d'événement", "Sous-type d'événement",
    "Nom du patient", "Informations sur l'appareil", "ID de l'appareil source",
    "Valeur du glucose (mmol/L)", "Valeur de l'insuline (u)", "Valeur des glucides (grammes)",
    "Durée (hh:mm:ss)", "Taux de variation du glucose (mmol/L/min)",
    "Heure du transmetteur (entier long)", "ID du transmetteur",
]


def clarity_row(index: int, stamp: str, event: str, subtype: str = "", glucose: str = "",
                insulin: str = "", carbs: str = "", duration: str = "",
                transmitter: str = "8XXXX1") -> list[str]:
    return [str(index), stamp, event, subtype, "", "", "", glucose, insulin, carbs, duration,
            "", "", transmitter]


def test_clarity_every_logged_event_type() -> None:
    rows = [
        clarity_row(1, "2024-03-31T01:55:00", "EGV", glucose="120"),
        clarity_row(2, "2024-03-31T01:58:00", "Insulin", "Fast-Acting", insulin="3.5"),
        clarity_row(3, "2024-03-31T03:10:00", "Insulin", "Long-Acting", insulin="14"),
        clarity_row(4, "2024-03-31T03:15:00", "Carbs", carbs="60"),
        clarity_row(5, "2024-03-31T03:20:00", "Exercise", "Medium", duration="00:45:00"),
        clarity_row(6, "2024-03-31T03:25:00", "Health", "Illness"),
        clarity_row(7, "2024-03-31T03:30:00", "Carbs"),
        clarity_row(8, "2024-03-31T03:35:00", "Insulin", "Fast-Acting", insulin="x"),
    ]
    text = "\n".join(",".join(cells) for cells in [CLARITY_HEADER, *rows])
    result = to_bundle(text, patient=PATIENT, timezone="Europe/Paris")
    assert result.readings == 1
    assert result.events == 5
    assert [(r.row, r.reason) for r in result.skipped] == [(8, "Carbs event without a value")]
    assert [r.row for r in result.rejected] == [9]
    fast, slow = resources(result, "MedicationAdministration")
    # 01:58 is winter time, 03:10 summer time: the clocks went forward at 02:00
    assert fast["effectiveDateTime"] == "2024-03-31T01:58:00+01:00"
    assert fast["dosage"]["dose"]["value"] == 3.5
    assert fast["medicationCodeableConcept"]["coding"][0]["code"] == "A10AB"
    assert slow["effectiveDateTime"] == "2024-03-31T03:10:00+02:00"
    assert slow["medicationCodeableConcept"]["coding"][0]["code"] == "A10AE"
    carbs, exercise, health = [o for o in events(result) if o["resourceType"] == "Observation"]
    assert carbs["valueQuantity"]["value"] == 60 and carbs["valueQuantity"]["code"] == "g"
    assert exercise["code"]["coding"][0] == {"system": "http://loinc.org", "code": "55411-3",
                                             "display": "Exercise duration"}
    assert exercise["valueQuantity"] == {"value": 45, "unit": "min", "system": UCUM,
                                         "code": "min"}
    assert exercise["note"] == [{"text": "intensity: Medium"}]
    assert health["code"]["coding"][0]["code"] == "health"
    assert health["valueString"] == "Illness"
    # the readings name their transmitter; the identifiers of events are keyed the same way
    (device,) = resources(result, "Device")
    assert device["serialNumber"] == "8XXXX1"
    assert fast["identifier"][0]["value"].startswith("dexcom-8XXXX1/20240331T005800Z/")


def test_french_clarity_header_semicolons_and_decimal_commas() -> None:
    rows = [
        clarity_row(1, "", "Appareil", transmitter=""),
        clarity_row(2, "2024-03-01T08:00:00", "EGV", glucose="5,4"),
        clarity_row(3, "2024-03-01T08:05:00", "Étalonnage", glucose="6,1"),
        clarity_row(4, "2024-03-01T08:10:00", "Insuline", "Action rapide", insulin="2,5"),
        clarity_row(5, "2024-03-01T08:15:00", "Glucides", carbs="30"),
    ]
    text = "\n".join(";".join(cells) for cells in [FRENCH_CLARITY_HEADER, *rows])
    assert detect_format(text) == "dexcom-clarity"
    result = to_bundle(text, patient=PATIENT, timezone="Europe/Paris")
    assert result.rejected == []
    assert [r.reason for r in result.skipped] == ["metadata row (Appareil)"]
    assert result.readings == 2 and result.events == 2
    egv, calibration = [o for o in resources(result, "Observation")
                        if o["identifier"][0]["system"].endswith("/device-reading")]
    assert egv["code"]["coding"][0]["code"] == "105272-9"  # mmol/L from the French header
    assert egv["valueQuantity"]["value"] == 5.4
    assert calibration["valueQuantity"]["value"] == 6.1
    (dose,) = resources(result, "MedicationAdministration")
    assert dose["dosage"]["dose"]["value"] == 2.5


def test_logged_events_are_stored_found_and_not_duplicated(client: httpx.Client) -> None:
    patient = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    result = to_bundle(french_libre_export(), patient=f"Patient/{patient}",
                       timezone="Europe/Paris")
    for attempt in ("first", "again"):
        response = client.post("/", json=result.bundle)
        assert response.status_code == 200, response.text
        statuses = [e["response"]["status"] for e in response.json()["entry"]]
        if attempt == "first":
            assert statuses.count("201 Created") == 1 + 2 + 6  # the Device, readings, events
        else:
            assert not any(s.startswith("201") for s in statuses)
    found = client.get("/MedicationAdministration",
                       params={"subject": f"Patient/{patient}", "code": f"{ATC}|A10AB"}).json()
    doses = [e["resource"] for e in found["entry"]]
    assert len(doses) == 2
    assert {d.get("dosage", {}).get("dose", {}).get("value") for d in doses} == {4.5, None}
    carbs = client.get("/Observation", params={
        "subject": f"Patient/{patient}", "code": "http://loinc.org|9059-7"}).json()
    assert [e["resource"]["valueQuantity"]["value"] for e in carbs["entry"]] == [45]
