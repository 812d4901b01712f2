"""Accuracy report against hand-computed values; Markdown table; atomic JSON/Markdown files."""
import json
import math
import os

import numpy as np
import pytest
import torch

from fastlt.errors import FastltError
from fastlt.evaluate.report import accuracy_report, markdown_table, write_report

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


def test_tensors_and_no_groups():
    report = accuracy_report(torch.from_numpy(PREDICTIONS), torch.from_numpy(LABELS), 4, None)
    assert report["overall"] == pytest.approx(60.0) and report["per_class"] == pytest.approx(PER_CLASS)
    assert not {"many", "medium", "few"} & set(report)


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
    assert lines[0] == "| evaluation | overall | many | medium | few | class std |"
    assert lines[2] == "| linear | 60.00 | 75.00 | 41.67 | 100.00 | 25.26 |"
    assert lines[3] == "| knn@1 | 100.00 | - | - | - | 0.00 |"


def test_write_report_atomic_files(tmp_path):
    out = tmp_path / "eval"
    extra = {"checkpoint": "run/checkpoints/last.pt", "test_samples": np.int64(10), "groups": {"few": np.array([3])}}
    json_path, markdown_path = write_report(out, reports(), extra)
    assert sorted(p.name for p in out.iterdir()) == ["eval.json", "eval.md"]  # no temp file left behind
    document = json.loads(json_path.read_text())
    assert document["reports"]["linear"]["overall"] == pytest.approx(60.0)
    assert document["reports"]["linear"]["per_class"] == pytest.approx(PER_CLASS)
    assert document["test_samples"] == 10 and document["groups"] == {"few": [3]}
    assert "| linear | 60.00 | 75.00 | 41.67 | 100.00 | 25.26 |" in markdown_path.read_text()



def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    json_path, _ = write_report(tmp_path, reports(), {"run": 1})
    before = json_path.read_text()

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report(tmp_path, {"linear": reports()["knn@1"]}, {"run": 2})
    assert json_path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json", "eval.md"]
