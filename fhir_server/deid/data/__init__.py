"""Data files of the de-identification package (the default rules profile)."""
