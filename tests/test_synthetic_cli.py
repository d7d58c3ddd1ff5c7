"""The `generate` command: NDJSON output, and --load through the caller's loader."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson
import pytest

from fhir_server.synthetic import generate
from fhir_server.synthetic.cli import add_commands, main, run_generate


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_generate_writes_ndjson_and_prints_counts(tmp_path: Path, capsys) -> None:
    assert main(["generate", "--patients", "4", "--days", "2", "--seed", "3",
                 "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "Patient" in printed and "resources/s" in printed
    patients = (tmp_path / "Patient.ndjson").read_bytes().splitlines()
    assert [orjson.loads(line)["id"] for line in patients] == [f"p-3-{i}" for i in range(4)]


def test_load_hands_the_stream_to_the_callers_loader(capsys) -> None:
    args = _parse(["generate", "--patients", "3", "--days", "1", "--seed", "2", "--load"])
    loaded: list[dict] = []
    counts = run_generate(args, loaded.extend)
    assert loaded == list(generate(3, 1, 2))
    assert sum(counts.values()) == len(loaded)
    assert counts["Patient"] == 3


def test_load_without_a_loader_is_refused() -> None:
    args = _parse(["generate", "--patients", "1", "--days", "1", "--load"])
    with pytest.raises(SystemExit, match="no database loader"):
        run_generate(args, None)


def test_out_or_load_is_required() -> None:
    with pytest.raises(SystemExit):
        _parse(["generate", "--patients", "1", "--days", "1"])
