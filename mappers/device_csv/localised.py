"""Localised headers of the LibreView and Clarity exports, read as their English names.

The vendors' clouds write the header (and Clarity its event types) in the language of the
account: a French LibreView export has `Horodatage de l'appareil` where an English one has
`Device Timestamp`. The formats are written against the English names; `english_header`
renames the known localised cells (whole names, or a prefix followed by the unit, as in
`Historique de la glycémie mg/dL`) and leaves every other cell as it is, so detection and
column lookup work unchanged. Separators (`;`) and decimal commas are handled where every
file is read (table.py, values.py).

The French LibreView names are those of LibreView's French export as published in public
projects that read it; the French Clarity names are those of Clarity's French interface.
"""

from __future__ import annotations

# Whole header cells (compared lower-cased) -> the English name.
_EXACT = {
    # LibreView (FreeStyle Libre), French
    "appareil": "Device",
    "numéro de série": "Serial Number",
    "horodatage de l'appareil": "Device Timestamp",
    "horodatage du lecteur": "Meter Timestamp",
    "type d'enregistrement": "Record Type",
    "insuline à action rapide sans valeur numérique": "Non-numeric Rapid-Acting Insulin",
    "insuline à action rapide (unités)": "Rapid-Acting Insulin (units)",
    "alimentation sans valeur numérique": "Non-numeric Food",
    "glucides (grammes)": "Carbohydrates (grams)",
    "glucides (portions)": "Carbohydrates (servings)",
    "insuline à action longue sans valeur numérique": "Non-numeric Long-Acting Insulin",
    "insuline à action longue (unités)": "Long-Acting Insulin (units)",
    "remarques": "Notes",
    "insuline repas (unités)": "Meal Insulin (units)",
    "correction insuline (unités)": "Correction Insulin (units)",
    "insuline modifiée par l'utilisateur (unités)": "User Change Insulin (units)",
    # Clarity (Dexcom), French
    "type d'événement": "Event Type",
    "sous-type d'événement": "Event Subtype",
    "nom du patient": "Patient Info",
    "informations sur l'appareil": "Device Info",
    "id de l'appareil source": "Source Device ID",
    "id du transmetteur": "Transmitter ID",
    "durée (hh:mm:ss)": "Duration (hh:mm:ss)",
}

# Header prefixes (followed by a unit or a format) -> the English prefix.
_PREFIXES = (
    ("historique de la glycémie", "Historic Glucose"),
    ("numérisation de la glycémie", "Scan Glucose"),
    ("glycémie par bandelette", "Strip Glucose"),
    ("cétone", "Ketone"),
    ("horodatage", "Timestamp"),
    ("valeur du glucose", "Glucose Value"),
    ("valeur de l'insuline", "Insulin Value"),
    ("valeur des glucides", "Carb Value"),
)

# Clarity event types in French -> the English ones (compared lower-cased).
EVENT_TYPES = {
    "étalonnage": "calibration",
    "insuline": "insulin",
    "glucides": "carbs",
    "exercice": "exercise",
    "santé": "health",
    "alerte": "alert",
    "prénom": "firstname",
    "nom": "lastname",
    "date de naissance": "dateofbirth",
    "appareil": "device",
}


def _english(cell: str) -> str:
    lowered = cell.strip().lower().replace("\u2019", "'")
    exact = _EXACT.get(lowered)
    if exact is not None:
        return exact
    for prefix, english in _PREFIXES:
        if lowered.startswith(prefix):
            return english + cell.strip()[len(prefix):]
    return cell


def english_header(cells: list[str]) -> list[str]:
    """The header with its known localised cells renamed to the English ones."""
    return [_english(cell) for cell in cells]
