"""The words and figures of the AGP report in French and English: the labels, and the rows
of the metrics panel (shared by the HTML page and the PDF / PNG page, so both say the
same)."""

from __future__ import annotations

from dataclasses import dataclass

from fhir_server.clinical.glucose import MG_PER_MMOL
from fhir_server.clinical.metrics import CgmMetrics
from fhir_server.clinical.period import first_day, last_day
from fhir_server.clinical.ranges import CV_TARGET, TARGETS

LANGUAGES = ("en", "fr")

TEXT = {
    "en": {
        "title": "Ambulatory Glucose Profile (AGP)",
        "metrics": "Glucose statistics and targets",
        "tir": "Time in ranges",
        "modal": "Ambulatory glucose profile (24 h)",
        "daily": "Daily glucose profiles",
        "period": "Period",
        "days": "days",
        "days_label": "Days in the period (with data)",
        "active": "% time CGM is active",
        "readings": "Readings",
        "mean": "Mean glucose",
        "gmi": "Glucose management indicator (GMI)",
        "cv": "Glucose variability (CV)",
        "sd": "Standard deviation (SD)",
        "hypo_events": "Hypoglycaemia events (level 1 / 2 / extended)",
        "hyper_events": "Hyperglycaemia events (level 1 / 2 / extended)",
        "meter": "Meter readings (not in the CGM figures)",
        "target": "Target",
        "very_high": "Very high",
        "high": "High",
        "in_range": "In range",
        "low": "Low",
        "very_low": "Very low",
        "insufficient": "Insufficient data",
        "no-cgm-data": "no CGM data in the period",
        "period-shorter-than-14-days": "the period is shorter than 14 days",
        "cgm-active-below-70-percent": "the CGM was active less than 70 % of the time",
        "population": "Targets",
        "general": "type 1 and type 2 diabetes",
        "older": "older / high-risk",
        "pregnancy": "pregnancy (type 1)",
        "hour": "Time of day",
        "patient": "Patient",
        "none": "none",
        "patients": "Patients",
        "list_title": "Patients",
        "list_subtitle": "Latest HbA1c, and CGM over the last 14 days",
        "col_name": "Patient",
        "col_hba1c": "HbA1c",
        "col_hba1c_date": "HbA1c date",
        "col_tir": "TIR 70-180 (%)",
        "col_tbr": "TBR < 70 (%)",
        "col_tbr54": "TBR < 54 (%)",
        "col_gmi": "GMI (%)",
        "col_wear": "CGM days worn",
        "col_flags": "Flags",
        "tbr54-over-1": "< 54 over 1 %",
        "tbr70-over-4": "< 70 over 4 %",
        "no-hba1c-12-months": "no HbA1c in 12 months",
        "no-cgm-3-days": "no CGM data for 3 days",
    },
    "fr": {
        "title": "Profil glycémique ambulatoire (AGP)",
        "metrics": "Statistiques glycémiques et objectifs",
        "tir": "Temps dans les cibles",
        "modal": "Profil glycémique ambulatoire (24 h)",
        "daily": "Profils glycémiques quotidiens",
        "period": "Période",
        "days": "jours",
        "days_label": "Jours de la période (avec données)",
        "active": "% de temps où le capteur est actif",
        "readings": "Mesures",
        "mean": "Glucose moyen",
        "gmi": "Indicateur de gestion du glucose (GMI)",
        "cv": "Variabilité glycémique (CV)",
        "sd": "Écart type (ET)",
        "hypo_events": "Hypoglycémies (niveau 1 / 2 / prolongées)",
        "hyper_events": "Hyperglycémies (niveau 1 / 2 / prolongées)",
        "meter": "Glycémies capillaires (hors chiffres du capteur)",
        "target": "Objectif",
        "very_high": "Très élevé",
        "high": "Élevé",
        "in_range": "Dans la cible",
        "low": "Bas",
        "very_low": "Très bas",
        "insufficient": "Données insuffisantes",
        "no-cgm-data": "aucune donnée de capteur sur la période",
        "period-shorter-than-14-days": "la période compte moins de 14 jours",
        "cgm-active-below-70-percent": "le capteur a été actif moins de 70 % du temps",
        "population": "Objectifs",
        "general": "diabète de type 1 et de type 2",
        "older": "personnes âgées / à risque",
        "pregnancy": "grossesse (type 1)",
        "hour": "Heure",
        "patient": "Patient",
        "none": "aucune",
        "patients": "Patients",
        "list_title": "Patients",
        "list_subtitle": "Dernière HbA1c, et capteur sur les 14 derniers jours",
        "col_name": "Patient",
        "col_hba1c": "HbA1c",
        "col_hba1c_date": "Date HbA1c",
        "col_tir": "TIR 70-180 (%)",
        "col_tbr": "TBR < 70 (%)",
        "col_tbr54": "TBR < 54 (%)",
        "col_gmi": "GMI (%)",
        "col_wear": "Jours de port",
        "col_flags": "Alertes",
        "tbr54-over-1": "< 54 plus de 1 %",
        "tbr70-over-4": "< 70 plus de 4 %",
        "no-hba1c-12-months": "pas d'HbA1c depuis 12 mois",
        "no-cgm-3-days": "pas de capteur depuis 3 jours",
    },
}


def choose_language(explicit: str | None, accept_language: str | None) -> str:
    """`lang=` first, then the first supported language of Accept-Language, then English."""
    if explicit:
        return explicit if explicit in LANGUAGES else "en"
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().lower()[:2]
        if tag in LANGUAGES:
            return tag
    return "en"


def glucose_text(mg_dl: float | None, unit: str) -> str:
    if mg_dl is None:
        return "-"
    if unit == "mmol/L":
        return f"{mg_dl / MG_PER_MMOL:.1f} mmol/L"
    return f"{mg_dl:.0f} mg/dL"


def number(value: float | None, digits: int, lang: str, suffix: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    if lang == "fr":
        text = text.replace(".", ",")
    return text + suffix


@dataclass(frozen=True)
class PanelRow:
    label: str
    value: str
    target: str = ""


def band_limits(unit: str, population: str) -> dict[str, str]:
    """The range each band covers, as the AGP states it, in the display unit."""
    bounds = TARGETS[population].bounds
    if unit == "mmol/L":
        lo, ir, hi, vh = bounds.mmol_l
        return {
            "very_high": f"> {vh}", "high": f"{hi + 0.1:.1f}-{vh}", "in_range": f"{ir}-{hi}",
            "low": f"{lo}-{ir - 0.1:.1f}", "very_low": f"< {lo}",
        }
    lo, ir, hi, vh = (int(b) for b in bounds.mg_dl)
    return {
        "very_high": f"> {vh}", "high": f"{hi + 1}-{vh}", "in_range": f"{ir}-{hi}",
        "low": f"{lo}-{ir - 1}", "very_low": f"< {lo}",
    }


def band_targets(population: str, lang: str) -> dict[str, str]:
    target = TARGETS[population]
    out = {"in_range": f"> {number(target.in_range_above, 0, lang)} %"}
    if target.very_high_under is not None:
        out["very_high"] = f"< {number(target.very_high_under, 0, lang)} %"
    if target.above_high_under is not None:
        out["high"] = f"< {number(target.above_high_under, 0, lang)} % (+)"
    if target.below_low_under is not None:
        out["low"] = f"< {number(target.below_low_under, 0, lang)} % (+)"
    if target.very_low_under is not None:
        out["very_low"] = f"< {number(target.very_low_under, 0, lang)} %"
    return out


def panel_rows(metrics: CgmMetrics, lang: str, unit: str) -> list[PanelRow]:
    t = TEXT[lang]
    first, last = first_day(metrics.period), last_day(metrics.period)
    e = metrics.events
    rows = [
        PanelRow(t["period"], f"{first:%d/%m/%Y} - {last:%d/%m/%Y}", ""),
        PanelRow(t["days_label"], f"{metrics.period.days} ({metrics.days_with_data})", "≥ 14"),
        PanelRow(t["active"], number(metrics.active_percent, 1, lang, " %"), "≥ 70 %"),
        PanelRow(t["readings"], str(metrics.readings)),
        PanelRow(t["mean"], glucose_text(metrics.mean_mg_dl, unit)),
        PanelRow(t["gmi"], number(metrics.gmi_percent, 1, lang, " %")),
        PanelRow(t["cv"], number(metrics.cv_percent, 1, lang, " %"),
                 f"≤ {number(CV_TARGET, 0, lang)} %"),
        PanelRow(t["sd"], glucose_text(metrics.sd_mg_dl, unit)),
        PanelRow(t["hypo_events"], f"{e.hypo_level1} / {e.hypo_level2} / {e.hypo_extended}"),
        PanelRow(t["hyper_events"], f"{e.hyper_level1} / {e.hyper_level2} / {e.hyper_extended}"),
        PanelRow(t["population"], t[metrics.population]),
    ]
    if metrics.meter.readings:
        rows.append(PanelRow(t["meter"], f"{metrics.meter.readings} "
                             f"({glucose_text(metrics.meter.mean_mg_dl, unit)})"))
    return rows


def flags_text(metrics: CgmMetrics, lang: str) -> str | None:
    if not metrics.flags:
        return None
    t = TEXT[lang]
    return f"{t['insufficient']}: " + "; ".join(t[f] for f in metrics.flags)
