"""Declarative mappings shipped with Diatabase (JSON), also named formats of `to_bundle`."""
