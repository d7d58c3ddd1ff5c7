"""Access control's cost: validating a bearer token, and a request with auth on against
the same request with --insecure-dev.

- `auth validate RS256` / `ES256`: TokenValidator.validate on a fresh token each time (the
  signature checked, the claims checked), in-process, per token;
- `auth validate cached`: the middleware's path for a token it has verified before (the
  times only);
- `auth read insecure-dev` / `auth read token` / `auth read patient token`: GET
  /Patient/{id} over HTTP on a real server (`diatabase serve`, one client, sequential),
  without access control, with a user/ token, and with a patient-context token (whose
  read is checked against the patient's compartment), so the difference is what access
  control costs a request.

    python -m bench.auth [--size small|medium|large]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.common import Result, percentile, print_table, serve

SIZES = {"small": (100, 100, 2), "medium": (2000, 2000, 5), "large": (10000, 10000, 5)}
AUDIENCE = "http://bench.local"


def _issuer(folder: Path, curve: str | None = None) -> Any:
    from tests.auth_tokens import TestIssuer, ec_key, rsa_key

    return TestIssuer.create(folder, key=ec_key(curve) if curve else rsa_key())


def validation(issuer: Any, count: int, label: str) -> Result:
    from fhir_server.auth.jwks import JwksSource
    from fhir_server.auth.tokens import TokenValidator, TrustedIssuer

    keys = JwksSource(str(issuer.jwks_path)).key
    validator = TokenValidator([TrustedIssuer(issuer.issuer, keys)])
    tokens = [issuer.token(AUDIENCE, "user/*.rs", jti=str(i)) for i in range(count)]
    validator.validate(tokens[0], AUDIENCE)  # JWKS loaded, code warm
    timings = []
    for token in tokens:
        started = time.perf_counter()
        validator.validate(token, AUDIENCE)
        timings.append(time.perf_counter() - started)
    return _result(f"auth validate {label}", f"{count} tokens, one at a time", timings,
                   "tokens/s")


def cached(issuer: Any, count: int) -> Result:
    from fhir_server.auth.tokens import TokenValidator

    claims = {"exp": int(time.time()) + 300, "iat": int(time.time())}
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        TokenValidator.check_times(claims)
        timings.append(time.perf_counter() - started)
    return _result("auth validate cached", f"{count} checks of a token seen before", timings,
                   "tokens/s")


def _result(name: str, workload: str, timings: list[float], unit: str) -> Result:
    total = sum(timings)
    return Result(name, workload, throughput=len(timings) / total if total else None,
                  unit=unit, p50_ms=percentile(timings, 50) * 1000,
                  p99_ms=percentile(timings, 99) * 1000)


@contextmanager
def _env(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _reads(url: str, path: str, headers: dict[str, str], count: int) -> list[float]:
    timings = []
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        for _ in range(20):  # warm: connection, caches, the token verified once
            assert http.get(path).status_code == 200
        for _ in range(count):
            started = time.perf_counter()
            response = http.get(path)
            timings.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return timings


def requests(folder: Path, count: int, runs: int) -> list[Result]:
    """GET /Patient/{id} on one database: without access control, with a user/ token, with
    a patient-context token; medians of `runs` runs of `count` requests."""
    from tests.auth_tokens import bearer

    issuer = _issuer(folder)
    db = f"sqlite:///{folder / 'auth-bench.db'}"
    figures: dict[str, list[list[float]]] = {"insecure-dev": [], "token": [], "patient token": []}
    with serve(db) as open_server:  # data written without access control
        made = httpx.post(f"{open_server.url}/Patient", json={"resourceType": "Patient"})
        patient = made.json()["id"]
        httpx.post(f"{open_server.url}/Observation", json={
            "resourceType": "Observation", "status": "final", "code": {"text": "glucose"},
            "subject": {"reference": f"Patient/{patient}"}})
    path = f"/Patient/{patient}"
    trusted = {"DIATABASE_AUTH_ISSUER": issuer.issuer, "DIATABASE_AUTH_JWKS": str(issuer.jwks_path)}

    def without_auth() -> None:
        with serve(db) as open_server:
            figures["insecure-dev"].append(_reads(open_server.url, path, {}, count))

    def with_auth() -> None:
        with _env(**trusted), serve(db, insecure_dev=False) as closed:
            user = bearer(issuer.token(closed.url, "user/Patient.rs"))
            own = bearer(issuer.token(closed.url, "patient/Patient.rs", patient=patient))
            figures["token"].append(_reads(closed.url, path, user, count))
            figures["patient token"].append(_reads(closed.url, path, own, count))

    for turn in range(runs):
        # The order alternates: on a shared machine, which server runs first matters.
        for step in (without_auth, with_auth) if turn % 2 == 0 else (with_auth, without_auth):
            step()
    results = []
    for label, samples in figures.items():
        medians = sorted(samples, key=statistics.median)
        chosen = medians[len(medians) // 2]
        results.append(_result(f"auth read {label}",
                               f"GET /Patient/id, {count} sequential, median of {runs} runs",
                               chosen, "req/s"))
    base = results[0].p50_ms
    if base is not None:
        for result in results[1:]:
            result.floor = f"{(result.p50_ms or 0) - base:+.3f} ms p50 vs insecure-dev"
    return results


def run(size: str = "small", db: str | None = None) -> list[Result]:
    tokens, reads, runs = SIZES[size]
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        rsa_issuer, ec_issuer = _issuer(folder), _issuer(folder, "P-256")
        results = [
            validation(rsa_issuer, tokens, "RS256"),
            validation(ec_issuer, tokens, "ES256"),
            cached(rsa_issuer, tokens),
        ]
        results += requests(folder, reads, runs)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="small")
    args = parser.parse_args(argv)
    print_table(run(args.size), f"access control ({args.size})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
