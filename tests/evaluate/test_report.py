"""Accuracy report against hand-computed values; Markdown table; atomic JSON/Markdown files."""
import json
import math
import os

import numpy as np
import pytest
import torch

from fastlt.errors import FastltError
from fastlt.evaluate.report import markdown_table, summarise_subsets, write_report
from fastlt.measure.accuracy import accuracy_report

# Class 0: 3 of 4 right, class 1: 1 of 2, class 2: 1 of 3, class 3: 1 of 1 -> 6 of 10 overall.
LABELS = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 3])
PREDICTIONS = np.array([0, 0, 0, 1, 1, 0, 2, 0, 1, 3])
GROUPS = {"many": np.array([0]), "medium": np.array([1, 2]), "few": np.array([3])}
PER_CLASS = [75.0, 50.0, 100.0 / 3, 100.0]
MEAN = (75 + 50 + 100 / 3 + 100) / 4
STD = math.sqrt(sum((a - MEAN) ** 2 for a in PER_CLASS) / 4)  # population std, about 25.26


def test_hand_computed_example():
    report = accuracy_report(PREDICTIONS, LABELS, 4, GROUPS)
    assert report["overall"] == pytest.approx(60.0)
    assert report["per_class"] == pytest.approx(PER_CLASS)
    assert report["many"] == pytest.approx(75.0)
    assert report["medium"] == pytest.approx((50 + 100 / 3) / 2)
    assert report["few"] == pytest.approx(100.0)
    assert report["class_mean"] == pytest.approx(MEAN)
    assert report["class_std"] == pytest.approx(STD) and 25.25 < STD < 25.27
    groups = [75.0, (50 + 100 / 3) / 2, 100.0]
    group_mean = sum(groups) / 3
    paper_std = math.sqrt(sum((g - group_mean) ** 2 for g in groups) / 3)  # SDCLR's np.std of the 3 groups
    assert report["group_std"] == pytest.approx(paper_std) and 23.89 < paper_std < 23.90


def test_tensors_and_no_groups():
    report = accuracy_report(torch.from_numpy(PREDICTIONS), torch.from_numpy(LABELS), 4, None)
    assert report["overall"] == pytest.approx(60.0) and report["per_class"] == pytest.approx(PER_CLASS)
    assert not {"many", "medium", "few", "group_std"} & set(report)


def test_class_without_test_samples_is_left_out():
    groups = {"many": np.array([0]), "medium": np.array([1, 2]), "few": np.array([3, 4])}
    report = accuracy_report(PREDICTIONS, LABELS, 5, groups)
    assert report["per_class"][4] is None
    assert report["few"] == pytest.approx(100.0)
    assert report["class_std"] == pytest.approx(STD)


def test_bad_inputs():
    with pytest.raises(FastltError, match="predictions"):
        accuracy_report(PREDICTIONS[:-1], LABELS, 4, None)
    with pytest.raises(FastltError, match="labels"):
        accuracy_report(PREDICTIONS, LABELS, 3, None)
    with pytest.raises(FastltError, match="groups"):
        accuracy_report(PREDICTIONS, LABELS, 4, {"tail": np.array([3])})


def reports():
    return {
        "linear": accuracy_report(PREDICTIONS, LABELS, 4, GROUPS),
        "knn@1": accuracy_report(LABELS, LABELS, 4, None),
    }


def test_markdown_rows_and_numbers():
    table = markdown_table(reports())
    lines = table.strip().splitlines()
    assert lines[0] == "| evaluation | overall | many | medium | few | group std | class std |"
    assert lines[2] == "| linear | 60.00 | 75.00 | 41.67 | 100.00 | 23.90 | 25.26 |"
    assert lines[3] == "| knn@1 | 100.00 | - | - | - | - | 0.00 |"


def test_subsets_are_summarised_by_mean_and_population_std():
    subsets = [accuracy_report(PREDICTIONS, LABELS, 4, GROUPS), accuracy_report(LABELS, LABELS, 4, GROUPS)]
    summary = summarise_subsets(subsets)
    assert summary["subsets"] == 2 and summary["per_subset"] == subsets
    assert summary["overall"] == pytest.approx(80.0) and summary["std_over_subsets"]["overall"] == pytest.approx(20.0)
    assert summary["few"] == pytest.approx(100.0) and summary["std_over_subsets"]["few"] == pytest.approx(0.0)
    assert "| 5-shot | 80.00 +- 20.00 |" in markdown_table({"5-shot": summary})


def test_write_report_writes_a_whole_folder_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "eval" / "bcl-linear-all"
    context = {"run": "runs/x", "test_samples": np.int64(10), "groups": {"few": np.array([3])}}
    json_path, markdown_path = write_report(out, "x: simclr, epoch 3", reports(), context)
    assert sorted(p.name for p in out.iterdir()) == ["eval.json", "eval.md"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["bcl-linear-all"]  # no partial folder left
    document = json.loads(json_path.read_text())
    assert document["title"] == "x: simclr, epoch 3"
    assert document["reports"]["linear"]["overall"] == pytest.approx(60.0)
    assert document["reports"]["linear"]["per_class"] == pytest.approx(PER_CLASS)
    assert document["test_samples"] == 10 and document["groups"] == {"few": [3]}
    markdown = markdown_path.read_text()
    assert markdown.startswith("# x: simclr, epoch 3\n") and "- run: runs/x" in markdown
    assert "| linear | 60.00 | 75.00 | 41.67 | 100.00 | 23.90 | 25.26 |" in markdown
    with pytest.raises(FastltError, match="exists already; pass --overwrite to replace it"):
        write_report(out, "again", reports(), context)
    assert json.loads(json_path.read_text())["title"] == "x: simclr, epoch 3"
    write_report(out, "again", reports(), context, overwrite=True)
    assert json.loads(json_path.read_text())["title"] == "again"


def test_failed_write_keeps_previous_report_and_leaves_no_partial_folder(tmp_path, monkeypatch):
    out = tmp_path / "report"
    json_path, _ = write_report(out, "first", reports(), {"run": 1})
    before = json_path.read_text()

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report(out, "second", {"linear": reports()["knn@1"]}, {"run": 2}, overwrite=True)
    assert json_path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
