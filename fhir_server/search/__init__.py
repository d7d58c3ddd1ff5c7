"""FHIR search: the parameter registry, index extraction at write time, query parsing."""
