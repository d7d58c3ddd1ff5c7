"""The `terminology` CLI: load a table into a data directory, then lookup/expand read it."""

from pathlib import Path

import pytest

from terminology import store
from terminology.cli import main
from terminology.service import TerminologyService
from terminology.uris import ATC, CIM10

DATA = Path(__file__).parent / "data" / "terminology"


def test_load_atc_then_service_merges_french_names(tmp_path, capsys):
    assert main(["terminology", "load", "--atc", str(DATA / "who_atc_synthetic.csv"),
                 "--into", str(tmp_path), "--version", "test-2026"]) == 0
    assert (tmp_path / store.FILE_NAMES["atc"]).exists()
    assert "saved 9 ATC codes" in capsys.readouterr().out
    service = TerminologyService(tmp_path)
    atc = service.system(ATC)
    assert atc.version == "test-2026"
    assert atc.content == "complete"
    assert "A10BX99" in atc  # from the loaded table
    metformin = atc.get("A10BA02")
    assert metformin.designations["fr"] == "metformine"  # kept from the shipped subset
    assert metformin.properties["ddd"] == "1.5 g O; 1.5 g O"


def test_load_cim10_snds_then_lookup_reads_it(tmp_path, capsys, monkeypatch):
    assert main(["terminology", "load",
                 "--cim10", str(DATA / "snds_MS_CIM_V_sample.csv"),
                 "--cim10", str(DATA / "snds_IR_CIM_V_sample.csv"),
                 "--into", str(tmp_path)]) == 0
    capsys.readouterr()
    monkeypatch.setenv(store.ENV_VAR, str(tmp_path))
    service = TerminologyService(store.data_dir_from_env())
    assert "F55.+1" in service.system(CIM10)
    assert "E66" not in service.system(CIM10)  # the loaded table replaces the subset
    assert main(["terminology", "lookup", "cim10", "F55.+1"]) == 0
    assert "Prise régulière de laxatifs" in capsys.readouterr().out


def test_load_claml(tmp_path, capsys):
    assert main(["terminology", "load", "--cim10", str(DATA / "cim10_synthetic.claml.xml"),
                 "--into", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["terminology", "--data-dir", str(tmp_path), "lookup", "cim10", "E11.0"]) == 0
    out = capsys.readouterr().out
    assert "parent: E11" in out and "child: E11.00" in out


def test_expand_and_lookup_output(capsys):
    assert main(["terminology", "expand", "drugs-used-in-diabetes", "--filter", "gliptine",
                 "--lang", "fr"]) == 0
    out = capsys.readouterr().out
    assert "A10BH01      sitagliptine" in out
    assert "in total" in out
    assert main(["terminology", "lookup", "icd10", "E11.9", "--lang", "fr"]) == 0
    assert "display: Diabète sucré de type 2, sans complication" in capsys.readouterr().out


def test_errors_give_exit_codes(tmp_path, capsys, monkeypatch):
    assert main(["terminology", "lookup", "nowhere", "X"]) == 1
    assert "not-found" in capsys.readouterr().err
    monkeypatch.delenv(store.ENV_VAR, raising=False)
    assert main(["terminology", "load", "--atc", str(DATA / "who_atc_synthetic.csv")]) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n", encoding="utf-8")
    assert main(["terminology", "load", "--atc", str(bad), "--into", str(tmp_path)]) == 1
    with pytest.raises(SystemExit):
        main(["terminology", "load"])  # --atc or --cim10 is required
