"""SQL on FHIR v2 views, materialised tables and Measures (see README.md); cohorts as FHIR
Groups (cohorts.py, cohort_store.py, groups.py)."""
