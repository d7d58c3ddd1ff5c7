"""Server configuration: from the environment (DIATABASE_*), overridden by CLI flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_DB = "sqlite:///./diatabase.db"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass(frozen=True)
class Settings:
    db_url: str = DEFAULT_DB
    # The public base URL ("https://fhir.example.org/fhir"). Empty: taken from each request.
    base_url: str = ""
    max_body_bytes: int = 50 * 1024 * 1024
    default_count: int = 50
    max_count: int = 1000
    # Extra validators are added by the profiles and terminology parts of the server.
    require_profiles: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    # De-identification facade (/deid/): on when a recipients file is given. The master
    # secret comes from DIATABASE_DEID_SECRET only (never a CLI flag, never printed).
    deid_secret: str = field(default="", repr=False)
    deid_recipients: str = ""
    deid_rules: str = ""
    deid_only: bool = False
    deid_export_dir: str = ""

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "db_url": os.environ.get("DIATABASE_DB", DEFAULT_DB),
            "base_url": os.environ.get("DIATABASE_BASE_URL", ""),
            "max_body_bytes": _env_int("DIATABASE_MAX_BODY_BYTES", 50 * 1024 * 1024),
            "default_count": _env_int("DIATABASE_DEFAULT_COUNT", 50),
            "max_count": _env_int("DIATABASE_MAX_COUNT", 1000),
            "deid_secret": os.environ.get("DIATABASE_DEID_SECRET", ""),
            "deid_recipients": os.environ.get("DIATABASE_DEID_RECIPIENTS", ""),
            "deid_rules": os.environ.get("DIATABASE_DEID_RULES", ""),
            "deid_export_dir": os.environ.get("DIATABASE_DEID_EXPORT_DIR", ""),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
