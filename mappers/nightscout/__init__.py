"""Nightscout API v1 documents (entries, treatments, device status, profiles) to FHIR R4
transaction Bundles, and stored FHIR resources back to the documents Nightscout clients
read. No HTTP and no storage here: fhir_server/ingest/nightscout.py runs the Bundles and
the searches.

    upload = Upload(site="abc", patient_ref="Patient/1")
    answered = [add_entry(upload, doc) for doc in docs]      # DocumentError on a bad one
    bundle = upload.bundle()                                  # conditional creates
"""

from __future__ import annotations

from . import common, entries
from .common import DocumentError, SkippedDocument
from .entries import add_entry, entry_of
from .status import add_devicestatus, add_profile, devicestatus_of, profile_of
from .treatments import add_treatment, treatments_of
from .upload import Upload

__all__ = [
    "DocumentError",
    "SkippedDocument",
    "Upload",
    "add_devicestatus",
    "add_entry",
    "add_profile",
    "add_treatment",
    "common",
    "devicestatus_of",
    "entries",
    "entry_of",
    "profile_of",
    "treatments_of",
]
