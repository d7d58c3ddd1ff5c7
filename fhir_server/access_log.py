"""Access log lines without their query strings.

A search names what it looks for: `Patient?identifier=<INS>`, `?name=...&birthdate=...`.
Uvicorn's access log writes the whole request line, so every national identifier, name and
birth date searched for would land in log files, which are kept, rotated and shipped to
places patient data must not go. The lines keep the client, method, path and status.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

OMITTED = "?..."


class OmitQueryString(logging.Filter):
    """On the `uvicorn.access` logger: its records carry (client, method, path with query,
    HTTP version, status) as arguments, which the access formatter reads."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            path, _, query = args[2].partition("?")
            if query:
                record.args = (args[0], args[1], path + OMITTED, args[3], args[4])
        return True


def log_config() -> dict[str, Any]:
    """Uvicorn's own logging configuration, with the access lines' queries omitted."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["omit_query"] = {"()": f"{__name__}.OmitQueryString"}
    config["loggers"]["uvicorn.access"]["filters"] = ["omit_query"]
    return config
