"""Synthetic French diabetes cohort: FHIR R4 resources as dicts or NDJSON files.

    from fhir_server.synthetic import generate, write_ndjson
    counts = write_ndjson("out/", patients=100, days=30, seed=1)

Standalone: imports only the standard library and orjson (never the api or storage).
"""

from .generator import DEFAULT_END_DATE, generate, gmi_percent, profile_of, write_ndjson

__all__ = ["DEFAULT_END_DATE", "generate", "gmi_percent", "profile_of", "write_ndjson"]
