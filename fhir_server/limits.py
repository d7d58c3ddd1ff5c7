"""The server's bounds: how much one request may ask for and how long it may run.

A request past one of these gets an OperationOutcome naming the limit (code `too-costly`),
never a 500 and never unbounded work. Every limit is a field of `Limits` (held by
`Settings.limits`) and an environment variable; README's configuration table lists them.
Why each default is what it is:

- `max_chain_depth`, `max_has_depth`, `max_nesting`: SQLite's parser stack (100 frames)
  overflows on a 6-link chain, 8 nested `_has` or a 2-level `_has` around a 4-link chain;
  5 levels in all always fit, and real searches use one or two.
- `max_search_parameters`: every filter is one AND term; SQLite refuses an expression
  deeper than 1,000 terms (999 repeats of `value-quantity=ne...`). 100 is far above real use.
  `max_search_values`: each value is an SQL condition, planned and probed: 10,000 of them
  (100 parameters of 100 values) took 12 s to plan on an empty database, 1,000 take 0.2 s.
  `max_id_values`: `_id` lists are outside those two: one `id IN (...)` lookup of the
  (type, id) index, not a condition per value; 10,000 ids (a cohort, a Group's export) is
  the list cohorts ask for, and stays far below SQLite's 32,766 bound parameters.
- `max_json_depth`: orjson writes at most 255 levels; deeper documents go through
  `jsonio`'s slower path, up to this depth. A Questionnaire with items 130 deep is about 265
  levels; Python's own recursion (validators, FHIRPath) is the ceiling above 900.
- `max_body_memory_bytes`: a body's memory once parsed, validated and indexed is about
  700 bytes per JSON object or array plus three times its text (measured: an 18.6 MB
  Observation of 150,000 components took +457 MB; an 18.6 MB Binary +75 MB). A body whose
  estimate passes the limit is refused before it is parsed (413): 768 MB admits a 90-day
  CGM Bundle (about 200 MB) and refuses 50 MB of small objects (about 1.4 GB).
- `search_seconds`: a search, read, history, `$everything` or operation past this is stopped
  (400 `too-costly`). `write_seconds`: the same for writes and Bundles, which may
  legitimately take long (a 90-day CGM import is one transaction of 27,000 resources).
- `job_seconds`: a background job (bulk export or import, de-identified export) is stopped
  past this and fails, naming it. A job is long by nature (an export of a national cohort
  takes hours), so the default is a day; it is there so that no job runs forever.
- `total_count_seconds`: `_total=accurate` counts for at most this long; past it the Bundle
  has no total (R4 lets a server leave it out) and says so in an outcome entry.
- `send_seconds`, `receive_seconds`: a client that takes no part of its answer, or sends no
  part of its body, for this long is disconnected (408 for a body): an answer waiting for a
  reader that never reads holds memory, and a connection that dribbles holds a worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Limits:
    # search
    max_chain_depth: int = 4  # `subject:Patient.organization.partof.name`: 3 links
    max_has_depth: int = 4  # `_has:` levels in one parameter
    max_nesting: int = 5  # chain links and `_has` levels in one parameter together
    max_search_parameters: int = 100  # filter parameters (repeats included) in one search
    max_or_values: int = 100  # comma-separated values of one parameter
    max_search_values: int = 1000  # values of all parameters together
    max_id_values: int = 10_000  # ids of one `_id` list (one `id IN (...)` lookup)
    max_include_iterations: int = 4  # rounds of `_include:iterate` / `_revinclude:iterate`
    max_included: int = 5000  # included resources in one page
    # bodies (their size in bytes is Settings.max_body_bytes)
    max_json_depth: int = 512
    max_body_memory_bytes: int = 768 * 1024 * 1024  # what a body may take once parsed
    max_bundle_entries: int = 100_000
    # time
    search_seconds: float = 10.0
    write_seconds: float = 300.0
    job_seconds: float = 86400.0
    total_count_seconds: float = 2.0
    shutdown_grace_seconds: float = 2.0
    # slow clients: a body chunk must arrive, and a response chunk be taken, within these
    send_seconds: float = 30.0
    receive_seconds: float = 30.0

    def includes_cut_short(self) -> str:
        """The warning of a page whose included resources hit the limits."""
        return (
            f"Included resources were cut short at {self.max_include_iterations} rounds of "
            f":iterate or {self.max_included} resources (limits max_include_iterations, "
            "max_included): the page may lack some"
        )

    def total_not_counted(self) -> str:
        """The warning of a page whose `_total=accurate` was not counted in time."""
        return (
            f"_total=accurate: the matches were not all counted within "
            f"{self.total_count_seconds:g} s (limit total_count_seconds), so the Bundle has "
            "no total; _summary=count counts them with the whole request's budget"
        )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Limits:
        """Each field from `DIATABASE_<FIELD>` (e.g. DIATABASE_SEARCH_SECONDS=5)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f"DIATABASE_{f.name.upper()}")
            if raw:
                kind = int if f.type in ("int", int) else float
                try:
                    values[f.name] = kind(raw)
                except ValueError:
                    raise ValueError(
                        f"DIATABASE_{f.name.upper()} must be a number, not {raw!r}"
                    ) from None
        return cls(**values)  # type: ignore[arg-type]
