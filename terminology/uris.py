"""Canonical URIs of the systems and resources this library serves (see DESIGN.md)."""

ICD10 = "http://hl7.org/fhir/sid/icd-10"
CIM10 = "https://smt.esante.gouv.fr/terminologie-cim-10/"
ATC = "http://www.whocc.no/atc"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"

BASE = "https://diatabase.org/fhir"
VS_DIABETES_CONDITIONS = f"{BASE}/ValueSet/diabetes-conditions"
VS_DRUGS_USED_IN_DIABETES = f"{BASE}/ValueSet/drugs-used-in-diabetes"
VS_GLUCOSE_CODES = f"{BASE}/ValueSet/glucose-codes"
VS_HBA1C_CODES = f"{BASE}/ValueSet/hba1c-codes"
VS_GLUCOSE_UNITS = f"{BASE}/ValueSet/glucose-units"

CM_CIM10_TO_ICD10 = f"{BASE}/ConceptMap/cim10-to-icd10"
CM_ATC_PARENT = f"{BASE}/ConceptMap/atc-parent"

# FHIR convention for "all codes of a system" (implicit value set), also ?fhir_vs=isa/CODE.
IMPLICIT_VS_SUFFIX = "?fhir_vs"
CM_ICD10_TO_CIM10 = f"{BASE}/ConceptMap/icd10-to-cim10"
