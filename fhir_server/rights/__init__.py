"""Patients' rights: objection to research use (objections.py), erasure with legal holds
(erasure.py, holds.py) and the public transparency figures (transparency.py)."""
