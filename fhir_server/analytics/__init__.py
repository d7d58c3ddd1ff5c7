"""SQL on FHIR v2 views, materialised tables and Measures (see README.md)."""
