"""The de-identification engine and facade: pseudonyms, rules, exports, leak tracing.

Nothing here imports `fhir_server.api`: the HTTP router (`fhir_server/api/deid.py`) calls in.
"""
