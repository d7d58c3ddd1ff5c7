"""Terminology for Diatabase: ICD-10 (WHO), CIM-10 FR, ATC, a LOINC subset and UCUM units,
with the logic of the FHIR terminology operations.

A library on its own: it never imports `fhir_server`. Entry point:
`TerminologyService.default()`; see terminology/README.md.
"""

from terminology.errors import TerminologyError
from terminology.parameters import parse_parameters
from terminology.service import TerminologyService

__all__ = ["TerminologyError", "TerminologyService", "parse_parameters"]
