"""docs/benchmarks.md against the stored results it is built from (bench/results): every table printed from the
stored rows appears verbatim on the page, and bench/results holds data only."""

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from bench import defaults, final_labels, k_selection, quality_report, scale, throughput

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text()


def test_quality_tables_are_the_report_of_the_stored_rows(doc):
    text = quality_report.render([RESULTS / "quality" / "table.jsonl"], [RESULTS / "quality" / "baselines.jsonl"])
    assert "### Table II, label-free" in text and "**mean over 21 sets**" in text
    assert text in doc


def test_final_labels_table_is_the_report_of_the_stored_rows(doc):
    text = final_labels.report(RESULTS / "final_labels")
    assert "| **mean** |" in text and text.count("\n") > 21
    assert text in doc


def test_jsonl_rows_read_as_the_printed_log_rows(tmp_path):
    rows = [{"dataset": "a", "seed": 0, "variant": "full", "pick_ari": 0.5, "oracle_ari": 0.75},
            {"dataset": "a", "seed": 1, "variant": "no_sure", "pick_ari": 0.25, "overrides": None}]
    (tmp_path / "r.log").write_text("header line\n" + "".join(f"{r}\n" for r in rows))
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = quality_report._read(tmp_path / "r.log"), quality_report._read(tmp_path / "r.jsonl")
    assert list(a.columns) == list(b.columns) and len(a) == 2
    assert a.astype(str).equals(b.astype(str))


def test_speed_section_is_the_stored_run(doc, tmp_path):
    copy = tmp_path / "benchmarks.md"
    shutil.copy(DOC, copy)
    throughput.main(["--from-json", str(RESULTS / "speed" / "throughput.json"), "--write-docs", str(copy)])
    assert copy.read_text() == doc  # regenerating the section changes nothing
    assert "## Speed" in doc and "| 256 | 9.36 |" in doc


def test_scale_and_k_selection_tables_are_the_stored_runs(doc):
    for text in (scale.report(json.loads((RESULTS / "scale" / "scale_100k_1m.json").read_text())),
                 k_selection.report(json.loads((RESULTS / "k_selection.json").read_text()))):
        assert text.count("\n") >= 4 and text in doc


def test_training_histories_figures_are_the_stored_histories(doc):
    flat = " ".join(doc.split())
    d = RESULTS / "defaults"
    for name, n_sets in (("base_lr1e-3.jsonl", 21), ("lr3e-4.jsonl", 12)):
        mean = defaults.rules([d / name], [0, 20]).splitlines()[-1]
        last, oracle, silh0, silh20, _stab0, stab20 = re.findall(r"\*\*([0-9.]+)\*\*", mean)
        assert f"({n_sets} sets)" in mean
        assert f"{n_sets} sets (`{name}`) | {last} | {silh0} | {silh20} | {stab20} | {oracle} |" in flat
    cmp = defaults.compare(d / "base_lr1e-3.jsonl", d / "lr3e-4.jsonl")
    b_last, b_pick, b_or, v_last, v_pick, v_or = re.findall(r"[0-9]\.[0-9]{3}", cmp)
    assert cmp.startswith("20 runs in common")
    assert (f"last epoch {b_last} -> {v_last}, silhouette pick {b_pick} -> {v_pick}, oracle {b_or} -> {v_or}"
            in flat)


def test_results_hold_data_only():
    files = [p for p in RESULTS.rglob("*") if p.is_file()]
    assert files
    for p in files:
        text = p.read_text()
        if p.suffix == ".json":
            json.loads(text)
        elif p.suffix == ".jsonl":
            assert all(isinstance(json.loads(line), dict) for line in text.splitlines())
        elif p.suffix == ".csv":
            assert len(list(csv.reader(text.splitlines()))) > 1
        else:
            pytest.fail(f"{p.relative_to(ROOT)}: bench/results keeps result rows (.json, .jsonl, .csv) only")
