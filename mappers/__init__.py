"""Source formats (HL7 v2, CSV exports, DICOM) to FHIR R4 transaction Bundles.

A library on its own: it imports neither `fhir_server` nor any storage.
"""
