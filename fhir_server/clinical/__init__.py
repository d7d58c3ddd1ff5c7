"""Diabetes care on top of the store: the latest values of a patient ($lastn)."""
