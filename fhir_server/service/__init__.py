"""The FHIR interactions, below HTTP: resources, bundles, search, history."""
