"""Diatabase: a FHIR R4 server for diabetes data."""

__version__ = "0.1.0"
