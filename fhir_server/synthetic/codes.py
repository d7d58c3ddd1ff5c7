"""Code systems, codes and profile URLs the generator writes.

One place for every code, so a reviewer can check them against LOINC / ICD-10 / ATC in
one read, and the tests can check the output against the same tables.
"""

from __future__ import annotations

from typing import Final

# --- systems ---------------------------------------------------------------------------
LOINC: Final = "http://loinc.org"
UCUM: Final = "http://unitsofmeasure.org"
ICD10: Final = "http://hl7.org/fhir/sid/icd-10"
ATC: Final = "http://www.whocc.no/atc"
INS_TEST_OID: Final = "urn:oid:1.2.250.1.213.1.4.10"  # test INS: these patients are synthetic
OBS_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CLINICAL: Final = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION: Final = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/condition-category"
ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
DEVICE_NAME_TYPE: Final = "model-name"

# --- profiles (canonical URLs decided for the project) ---------------------------------
_SD: Final = "https://diatabase.org/fhir/StructureDefinition/"
PROFILE_PATIENT: Final = _SD + "DiabetesPatient"
PROFILE_BLOOD_GLUCOSE: Final = _SD + "BloodGlucose"
PROFILE_CGM: Final = _SD + "CGMSensorReading"
PROFILE_HBA1C: Final = _SD + "HbA1c"
PROFILE_CONDITION: Final = _SD + "DiabetesCondition"
PROFILE_MEDICATION: Final = _SD + "DiabetesMedicationStatement"

# --- LOINC (code, display, UCUM unit) --------------------------------------------------
CGM_GLUCOSE: Final = ("99504-3", "Glucose [Mass/volume] in Interstitial fluid", "mg/dL")
SMBG_MASS: Final = ("41653-7", "Glucose [Mass/volume] in Capillary blood by Glucometer", "mg/dL")
SMBG_MOLES: Final = ("15074-8", "Glucose [Moles/volume] in Blood", "mmol/L")
HBA1C: Final = ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%")
CREATININE: Final = ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL")
EGFR: Final = (
    "62238-1",
    "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or "
    "Blood by Creatinine-based formula (CKD-EPI)",
    "mL/min/{1.73_m2}",
)
UACR: Final = ("9318-7", "Albumin/Creatinine [Mass Ratio] in Urine", "mg/g")
CHOLESTEROL: Final = ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL")
HDL: Final = ("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL")
LDL: Final = (
    "13457-7", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation", "mg/dL"
)
TRIGLYCERIDES: Final = ("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL")
WEIGHT: Final = ("29463-7", "Body weight", "kg")
BMI: Final = ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2")
BP_PANEL: Final = ("85354-9", "Blood pressure panel with all children optional", "mm[Hg]")
SYSTOLIC: Final = ("8480-6", "Systolic blood pressure", "mm[Hg]")
DIASTOLIC: Final = ("8462-4", "Diastolic blood pressure", "mm[Hg]")

#: mg/dL per mmol/L for glucose (molar mass 180.16 g/mol), as in DESIGN.md
MGDL_PER_MMOL: Final = 18.016

# --- ICD-10 (WHO) ----------------------------------------------------------------------
# The 4th character of E10/E11 says which complication; ".7" is "multiple complications".
DIABETES_CODES: Final[dict[tuple[int, str], tuple[str, str]]] = {
    (1, "none"): ("E10.9", "Type 1 diabetes mellitus without complications"),
    (1, "nephropathy"): ("E10.2", "Type 1 diabetes mellitus with renal complications"),
    (1, "retinopathy"): ("E10.3", "Type 1 diabetes mellitus with ophthalmic complications"),
    (1, "neuropathy"): ("E10.4", "Type 1 diabetes mellitus with neurological complications"),
    (1, "foot_ulcer"): (
        "E10.5", "Type 1 diabetes mellitus with peripheral circulatory complications"
    ),
    (1, "multiple"): ("E10.7", "Type 1 diabetes mellitus with multiple complications"),
    (2, "none"): ("E11.9", "Type 2 diabetes mellitus without complications"),
    (2, "nephropathy"): ("E11.2", "Type 2 diabetes mellitus with renal complications"),
    (2, "retinopathy"): ("E11.3", "Type 2 diabetes mellitus with ophthalmic complications"),
    (2, "neuropathy"): ("E11.4", "Type 2 diabetes mellitus with neurological complications"),
    (2, "foot_ulcer"): (
        "E11.5", "Type 2 diabetes mellitus with peripheral circulatory complications"
    ),
    (2, "multiple"): ("E11.7", "Type 2 diabetes mellitus with multiple complications"),
}

# The manifestation ("asterisk") code of each complication, written as its own Condition.
COMPLICATION_CODES: Final[dict[str, tuple[str, str]]] = {
    "retinopathy": ("H36.0", "Diabetic retinopathy"),
    "nephropathy": ("N08.3", "Glomerular disorders in diabetes mellitus"),
    "neuropathy": ("G63.2", "Diabetic polyneuropathy"),
    "foot_ulcer": ("L97", "Ulcer of lower limb, not elsewhere classified"),
}

# --- ATC (code, WHO name, French product text, dosage text) -----------------------------
DRUGS: Final[dict[str, tuple[str, str, str, str]]] = {
    "metformin": ("A10BA02", "metformin", "Metformine 1000 mg", "1 comprimé matin et soir"),
    "gliclazide": ("A10BB09", "gliclazide", "Gliclazide 60 mg LM", "1 comprimé le matin"),
    "sitagliptin": ("A10BH01", "sitagliptin", "Sitagliptine 100 mg", "1 comprimé par jour"),
    "liraglutide": (
        "A10BJ02", "liraglutide", "Liraglutide 6 mg/ml stylo", "1,2 mg par jour en sous-cutané"
    ),
    "semaglutide": (
        "A10BJ06", "semaglutide", "Sémaglutide 1 mg stylo", "1 mg par semaine en sous-cutané"
    ),
    "empagliflozin": ("A10BK03", "empagliflozin", "Empagliflozine 10 mg", "1 comprimé par jour"),
    "dapagliflozin": ("A10BK01", "dapagliflozin", "Dapagliflozine 10 mg", "1 comprimé par jour"),
    "glargine": (
        "A10AE04", "insulin glargine", "Insuline glargine 100 U/ml",
        "injection le soir, dose adaptée",
    ),
    "aspart": ("A10AB05", "insulin aspart", "Insuline asparte 100 U/ml", "avant chaque repas"),
    "lispro": ("A10AB04", "insulin lispro", "Insuline lispro 100 U/ml", "avant chaque repas"),
}
