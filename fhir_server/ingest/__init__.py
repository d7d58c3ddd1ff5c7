"""Files and feeds into the store: `import` (HL7 v2, CSV, DICOM files), `load` (FHIR
JSON), and the MLLP listener (HL7 v2 over TCP). Mapping itself lives in `mappers`; the
storing of a mapped Bundle in `fhir_server.service.ingest`."""
