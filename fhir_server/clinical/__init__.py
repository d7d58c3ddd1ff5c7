"""Diabetes care on top of the store: the latest values of a patient ($lastn), CGM metrics
after the international consensus and their FHIR summary as the HL7 CGM IG codes it
(service.py is the Python API)."""
