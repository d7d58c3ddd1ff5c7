"""Server configuration: from the environment (DIATABASE_*), overridden by CLI flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from fhir_server.limits import Limits
from profiles.rules import rules_from_setting

DEFAULT_DB = "sqlite:///./diatabase.db"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


VALIDATION_MODES = ("strict", "lenient", "off")


@dataclass(frozen=True)
class Settings:
    db_url: str = DEFAULT_DB
    # The public base URL ("https://fhir.example.org/fhir"). Empty: taken from each request.
    base_url: str = ""
    max_body_bytes: int = 50 * 1024 * 1024
    default_count: int = 50
    max_count: int = 1000
    # Operator rules (criteria, profile url): every resource matching the criteria must
    # conform to the profile, e.g. ("Observation?code:in=https://diatabase.org/fhir/ValueSet/
    # glucose-codes", "https://diatabase.org/fhir/StructureDefinition/BloodGlucose").
    # DIATABASE_REQUIRE_PROFILES: the JSON list itself, or the path of a JSON file
    # ([{"criteria": ..., "profile": ...}], see profiles/README.md).
    require_profiles: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    # Check meta.profile claims and required profiles on every write (DIATABASE_VALIDATE_
    # PROFILES=0 turns it off, e.g. for a trusted bulk load; $validate still checks them).
    validate_profiles: bool = True
    # A claimed profile the server does not hold: "warn" (accept, with a warning in
    # $validate) or "reject" (DIATABASE_UNKNOWN_PROFILES). Unknown profiles under the
    # project's own canonical base are always rejected.
    unknown_profiles: str = "warn"
    # The R4 core rules (invariants, bindings, references, narratives, Bundle rules) on
    # writes (DIATABASE_VALIDATION): "strict" rejects a resource that breaks one (400),
    # "lenient" stores it and reports the problems as warnings (for sources that cannot be
    # fixed), "off" skips them (trusted bulk loads). $validate always checks them.
    validation: str = "strict"
    # An extension whose definition the server does not hold (US Core's, a vendor's):
    # "warn" (accepted, with a warning) or "reject" (an error, the reference validator's
    # default) (DIATABASE_UNKNOWN_EXTENSIONS).
    unknown_extensions: str = "warn"
    # HTML tags in string and markdown values (e.g. `<script>` in a name): "allow" (the
    # default; narratives are checked anyway) or "reject" (an error: for data shown by
    # readers that do not escape it) (DIATABASE_HTML_IN_TEXT).
    html_in_text: str = "allow"
    # Full terminology tables written by `diatabase terminology load` (None: shipped subsets).
    terminology_dir: str | None = None
    # De-identification facade (/deid/): on when a recipients file is given. The master
    # secret comes from DIATABASE_DEID_SECRET only (never a CLI flag, never printed).
    deid_secret: str = field(default="", repr=False)
    deid_recipients: str = ""
    deid_rules: str = ""
    deid_only: bool = False
    deid_export_dir: str = ""
    # The folder `diatabase views materialize` writes (Parquet + DuckDB): what Measures
    # with SQL criteria read (DIATABASE_VIEWS_DIR). Empty: SQL criteria are refused.
    views_dir: str = ""
    # Folder of materialized view stores (deid/views.py, filled by `diatabase deid views`):
    # the facade serves their rows instead of pseudonymizing on every request.
    deid_views: str = ""
    # The linkage keys the trusted third party returned (deid/linkage.py); default beside
    # a SQLite database.
    deid_linkage: str = ""
    # How much one request may ask for and how long it may run (limits.py, DIATABASE_*).
    limits: Limits = field(default_factory=Limits)
    # Access control (fhir_server/auth/). Closed by default: every clinical request needs a
    # valid bearer token unless `insecure_dev` (`serve --insecure-dev`, loopback only).
    insecure_dev: bool = False
    # One trusted token issuer (its `iss`) and its JWKS (a file path or an https URL).
    auth_issuer: str = ""
    auth_jwks: str = ""
    # Several trusted issuers: a JSON file [{"issuer": ..., "jwks": ...}, ...].
    auth_issuers_file: str = ""
    # The built-in SMART Backend Services token endpoint: its signing key (a private JWK or
    # PEM file; generated owner-only beside the database when absent) and token lifetime.
    auth_signing_key: str = ""
    auth_token_lifetime: int = 300
    # The auth store (clients, used assertions, the generated signing key): a SQLite file
    # of its own, owner-only; default beside a SQLite database (auth/store.py).
    auth_store: str = ""
    # Origins allowed to call the API from a browser (CORS), e.g. a SMART app's origin.
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    # The audit trail (fhir_server/audit/). DIATABASE_AUDIT=0 turns it off: for measuring
    # what it costs, never for a server holding patient data.
    audit: bool = True
    # Asynchronous jobs (fhir_server/jobs/: bulk export and import, the de-identified
    # export, cohort evaluations): where their store and files live (default beside a
    # SQLite database, `<db>.jobs`), how many run at once per process, and how long the
    # files of a finished job are kept (seconds; then deleted with the job).
    jobs_dir: str = ""
    jobs_workers: int = 2
    jobs_retention: int = 86400
    # Folders whose files `$import` may read by file:// URL (the operator's choice; none by
    # default: clients then send https URLs or upload the files).
    import_dirs: tuple[str, ...] = field(default_factory=tuple)
    # The public transparency figures are computed again at most this often (seconds).
    transparency_refresh_seconds: int = 300
    # Subscriptions (fhir_server/subscriptions/): rest-hook endpoints must be https; http to
    # a loopback address only in development (this, or --insecure-dev). A failed delivery is
    # tried again after retry_base * 2**(failures-1) seconds, at most retry_max; after
    # max_attempts failures in a row the subscription goes to `error`. The worker looks at
    # the outbox at least every poll_seconds (other processes' writes, timer topics).
    subscription_http_loopback: bool = False
    subscription_retry_base: float = 2.0
    subscription_retry_max: float = 600.0
    subscription_max_attempts: int = 10
    subscription_poll_seconds: float = 1.0
    # Deliver from the server process (default), or not: `diatabase subscriptions deliver`
    # then runs the worker as a process of its own (rest-hook only; websockets are bound to
    # the server process that delivers).
    subscription_delivery: bool = True

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "db_url": os.environ.get("DIATABASE_DB", DEFAULT_DB),
            "base_url": os.environ.get("DIATABASE_BASE_URL", ""),
            "max_body_bytes": _env_int("DIATABASE_MAX_BODY_BYTES", 50 * 1024 * 1024),
            "default_count": _env_int("DIATABASE_DEFAULT_COUNT", 50),
            "max_count": _env_int("DIATABASE_MAX_COUNT", 1000),
            "require_profiles": rules_from_setting(
                os.environ.get("DIATABASE_REQUIRE_PROFILES", "")
            ),
            "validate_profiles": os.environ.get("DIATABASE_VALIDATE_PROFILES", "1").lower()
            not in ("0", "false", "no", "off"),
            "unknown_profiles": os.environ.get("DIATABASE_UNKNOWN_PROFILES", "warn"),
            "validation": os.environ.get("DIATABASE_VALIDATION", "strict"),
            "unknown_extensions": os.environ.get("DIATABASE_UNKNOWN_EXTENSIONS", "warn"),
            "html_in_text": os.environ.get("DIATABASE_HTML_IN_TEXT", "allow"),
            "terminology_dir": os.environ.get("DIATABASE_TERMINOLOGY_DIR") or None,
            "deid_secret": os.environ.get("DIATABASE_DEID_SECRET", ""),
            "deid_recipients": os.environ.get("DIATABASE_DEID_RECIPIENTS", ""),
            "deid_rules": os.environ.get("DIATABASE_DEID_RULES", ""),
            "deid_export_dir": os.environ.get("DIATABASE_DEID_EXPORT_DIR", ""),
            "deid_views": os.environ.get("DIATABASE_DEID_VIEWS", ""),
            "views_dir": os.environ.get("DIATABASE_VIEWS_DIR", ""),
            "deid_linkage": os.environ.get("DIATABASE_DEID_LINKAGE", ""),
            "deid_only": os.environ.get("DIATABASE_DEID_ONLY", "").lower() in ("1", "true", "yes"),
            "limits": Limits.from_env(),
            "insecure_dev": os.environ.get("DIATABASE_INSECURE_DEV", "").lower()
            in ("1", "true", "yes"),
            "auth_issuer": os.environ.get("DIATABASE_AUTH_ISSUER", ""),
            "auth_jwks": os.environ.get("DIATABASE_AUTH_JWKS", ""),
            "auth_issuers_file": os.environ.get("DIATABASE_AUTH_ISSUERS", ""),
            "auth_signing_key": os.environ.get("DIATABASE_AUTH_SIGNING_KEY", ""),
            "auth_token_lifetime": _env_int("DIATABASE_AUTH_TOKEN_LIFETIME", 300),
            "auth_store": os.environ.get("DIATABASE_AUTH_STORE", ""),
            "cors_origins": tuple(
                o.strip() for o in os.environ.get("DIATABASE_CORS_ORIGINS", "").split(",")
                if o.strip()
            ),
            "audit": os.environ.get("DIATABASE_AUDIT", "1").lower()
            not in ("0", "false", "no", "off"),
            "jobs_dir": os.environ.get("DIATABASE_JOBS_DIR", ""),
            "jobs_workers": _env_int("DIATABASE_JOBS_WORKERS", 2),
            "jobs_retention": _env_int("DIATABASE_JOBS_RETENTION", 86400),
            "subscription_http_loopback": os.environ.get(
                "DIATABASE_SUBSCRIPTION_HTTP_LOOPBACK", ""
            ).lower() in ("1", "true", "yes"),
            "subscription_retry_base": float(
                os.environ.get("DIATABASE_SUBSCRIPTION_RETRY_BASE") or 2.0
            ),
            "subscription_retry_max": float(
                os.environ.get("DIATABASE_SUBSCRIPTION_RETRY_MAX") or 600.0
            ),
            "subscription_max_attempts": _env_int("DIATABASE_SUBSCRIPTION_MAX_ATTEMPTS", 10),
            "subscription_poll_seconds": float(
                os.environ.get("DIATABASE_SUBSCRIPTION_POLL_SECONDS") or 1.0
            ),
            "subscription_delivery": os.environ.get("DIATABASE_SUBSCRIPTION_DELIVERY", "1")
            .lower() not in ("0", "false", "no", "off"),
            "import_dirs": tuple(
                d for d in os.environ.get("DIATABASE_IMPORT_DIRS", "").split(os.pathsep) if d
            ),
            "transparency_refresh_seconds": _env_int("DIATABASE_TRANSPARENCY_REFRESH", 300),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["unknown_profiles"] not in ("warn", "reject"):
            raise ValueError(
                f"DIATABASE_UNKNOWN_PROFILES must be 'warn' or 'reject', "
                f"not {values['unknown_profiles']!r}"
            )
        if values["unknown_extensions"] not in ("warn", "reject"):
            raise ValueError(
                f"DIATABASE_UNKNOWN_EXTENSIONS must be 'warn' or 'reject', "
                f"not {values['unknown_extensions']!r}"
            )
        if values["html_in_text"] not in ("allow", "reject"):
            raise ValueError(
                f"DIATABASE_HTML_IN_TEXT must be 'allow' or 'reject', "
                f"not {values['html_in_text']!r}"
            )
        if values["validation"] not in VALIDATION_MODES:
            raise ValueError(
                f"DIATABASE_VALIDATION must be one of {', '.join(VALIDATION_MODES)}, "
                f"not {values['validation']!r}"
            )
        return cls(**values)  # type: ignore[arg-type]
