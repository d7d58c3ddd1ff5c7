"""Parsing, structural validation, references and OperationOutcome for FHIR resources."""
