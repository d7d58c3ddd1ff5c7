"""Name the recipient a leaked extract was made for.

Two kinds of evidence, both needing only the leaked file and the master secret:

- pseudonyms: every `Type/id` (resource ids and references) is tried against each
  recipient's AES-SIV key. A success is cryptographic proof (the SIV tag authenticates:
  a pseudonym of another key passes with probability 2^-128);
- the two watermarks, when ids and references were stripped: the seconds of every
  timestamp (watermark.py; erased by truncating timestamps to the minute) and the residue
  of every glucose value (value_mark.py; survives that). For each recipient and carrier,
  the probability that a recipient who did not receive the data matches at least that
  well is the binomial tail of its chance matches; times the number of tests made
  (recipients x 2 carriers: a union bound), that is the false-attribution probability
  reported. The best recipient is named only below `MAX_FALSE_ATTRIBUTION` (1e-9).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fhir_server.deid import value_mark
from fhir_server.deid.keys import RecipientKeys
from fhir_server.deid.pseudonyms import Pseudonymizer
from fhir_server.deid.rules import load_rules
from fhir_server.deid.watermark import carriers, count_matches, log10_tail
from fhir_server.model import jsonio

MAX_FALSE_ATTRIBUTION = 1e-9
MAX_PSEUDONYMS_TRIED = 200
CARRIER_KINDS = 2  # seconds of timestamps, residues of glucose values
_REFERENCE = re.compile(r'"reference"\s*:\s*"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})"')


@dataclass
class RecipientScore:
    recipient: str
    pseudonyms_decrypted: int
    watermark_matches: int
    log10_false_attribution: float
    value_matches: int = 0


@dataclass
class TraceReport:
    recipient: str | None
    method: str | None  # "pseudonyms" | "watermark" | None
    false_attribution_probability: float
    carriers: int
    pseudonyms_tried: int
    scores: list[RecipientScore] = field(default_factory=list)
    value_carriers: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "recipient": self.recipient,
            "method": self.method,
            "falseAttributionProbability": self.false_attribution_probability,
            "timestampCarriers": self.carriers,
            "valueCarriers": self.value_carriers,
            "pseudonymsTried": self.pseudonyms_tried,
            "scores": [
                {
                    "recipient": s.recipient,
                    "pseudonymsDecrypted": s.pseudonyms_decrypted,
                    "watermarkMatches": s.watermark_matches,
                    "valueMatches": s.value_matches,
                    "log10FalseAttribution": s.log10_false_attribution,
                }
                for s in self.scores
            ],
        }


def read_leak(path: str | Path) -> str:
    """The text of a leak: an NDJSON file, a JSON Bundle or array, or a folder of them."""
    path = Path(path)
    if path.is_dir():
        return "\n".join(p.read_text() for p in sorted(path.glob("*.ndjson")))
    return path.read_text()


def pseudonym_candidates(resources: list[dict[str, Any]], text: str) -> list[tuple[str, str]]:
    found: dict[tuple[str, str], None] = {}
    for line in resources:
        rtype, rid = line.get("resourceType"), line.get("id")
        if isinstance(rtype, str) and isinstance(rid, str):
            found[(rtype, rid)] = None
    for match in _REFERENCE.finditer(text):
        found[(match.group(1), match.group(2))] = None
    return list(found)[:MAX_PSEUDONYMS_TRIED]


def trace(
    text: str,
    recipients: list[RecipientKeys],
    value_watermarks: dict[str, dict[str, Any] | None] | None = None,
) -> TraceReport:
    """Name the recipient of a leak. `value_watermarks`: each recipient's value watermark
    configuration (its rules'); by default the default profile's, for every recipient."""
    resources = _resources(text)
    candidates = pseudonym_candidates(resources, text)
    found = carriers(text)
    n = len(found)
    default = load_rules().value_watermark
    configs = value_watermarks or {}
    contexts_by_config: dict[int, dict[str, set[int]]] = {}
    tests = math.log10(max(1, len(recipients)) * CARRIER_KINDS)
    scores = []
    value_n = 0
    for keys in recipients:
        pseudonyms = Pseudonymizer(keys.pseudonym, keys.hashed_pseudonym)
        decrypted = sum(1 for t, p in candidates if pseudonyms.real_id(t, p) is not None)
        matches = count_matches(keys.watermark, found)
        config = configs.get(keys.recipient_id, default)
        value_matches, value_count = 0, 0
        if config is not None:
            contexts = contexts_by_config.get(id(config))
            if contexts is None:
                contexts = contexts_by_config[id(config)] = value_mark.contexts(resources, config)
            value_count = len(contexts)
            value_matches = value_mark.count_matches(keys.value_watermark, contexts)
            value_n = max(value_n, value_count)
        log10_fa = min(
            0.0,
            min(
                log10_tail(n, matches),
                log10_tail(value_count, value_matches, value_mark.CHANCE_MATCH),
            )
            + tests,
        )
        scores.append(
            RecipientScore(keys.recipient_id, decrypted, matches, log10_fa, value_matches)
        )
    proven = [s for s in scores if s.pseudonyms_decrypted]
    if len(proven) == 1:
        return TraceReport(
            proven[0].recipient, "pseudonyms", 2.0**-128, n, len(candidates), scores, value_n
        )
    best = min(scores, key=lambda s: s.log10_false_attribution, default=None)
    if best is not None and 10**best.log10_false_attribution < MAX_FALSE_ATTRIBUTION:
        return TraceReport(
            best.recipient,
            "watermark",
            10**best.log10_false_attribution,
            n,
            len(candidates),
            scores,
            value_n,
        )
    return TraceReport(None, None, 1.0, n, len(candidates), scores, value_n)


def _resources(text: str) -> list[dict[str, Any]]:
    stripped = text.strip()
    if not stripped:
        return []
    try:
        whole = jsonio.loads(stripped)  # decimal literals as written: the values carry a mark
    except ValueError:
        whole = None
    if isinstance(whole, dict):
        if whole.get("resourceType") == "Bundle":
            return [e["resource"] for e in whole.get("entry", []) if "resource" in e]
        return [whole]
    if isinstance(whole, list):
        return [r for r in whole if isinstance(r, dict)]
    resources = []
    for line in stripped.splitlines():
        try:
            item = jsonio.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            resources.append(item)
    return resources
