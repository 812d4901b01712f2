"""fastlt compare: reports written by report.write_report, laid out side by side; CSV; RUN forms; one-line errors."""
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastlt.cli import main
from fastlt.evaluate.compare import compare_runs
from fastlt.evaluate.report import summarise_subsets, write_report
from fastlt.measure.accuracy import accuracy_report

GROUPS = {"many": np.array([0]), "medium": np.array([1]), "few": np.array([2])}
SPLIT = "/data/splits/digits_lt/ratio10_seed1.npy"


def accuracy(many: int, medium: int, few: int) -> dict:
    """report.accuracy_report on 4 test images per class, with 0-4 of each class right (25% steps)."""
    labels = np.repeat(np.arange(3), 4)
    predictions = labels.copy()
    for label, right in enumerate((many, medium, few)):
        predictions[label * 4 + right: label * 4 + 4] = (label + 1) % 3
    return accuracy_report(predictions, labels, 3, GROUPS)


def write_eval(run: Path, folder: str, rows: dict, *, method: str = "simclr", epoch: int = 200,
               shots: str = "full", protocol: str = "bcl-linear", exit: str = "backbone", sha: str = "c0ffee",
               split: str = SPLIT) -> Path:
    """An eval.json as protocol.linear_eval writes it: write_report with linear_eval's context keys."""
    context = {
        "run": str(run), "method": method, "epoch": epoch,
        "checkpoint": {"file": str(run / "checkpoints" / "last.pt"), "sha256": sha},
        "backbone": {"arch": "resnet18", "width": 4, "stem": "cifar"}, "store": "data/digits",
        "pretraining_split": {"file": split, "sha256": "ab", "samples": 468}, "test_samples": 12,
        "feature_precision": "fp32", "exit": exit, "groups": {k: v.tolist() for k, v in GROUPS.items()},
        "timings": {"pretrained seconds": 0.1}, "protocol": {"name": protocol, "knn": [1], "groups": "thirds"},
        "shots": shots, "probe_lists": [{"file": "(the whole train part)", "sha256": "cd", "samples": 1198}],
    }
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text("{}")
    json_path, _ = write_report(run / "eval" / folder, f"{run.name}: {method}", rows, context)
    return json_path


@pytest.fixture
def runs(tmp_path) -> dict[str, Path]:
    """Run a: BCL full-shot (linear, knn@1, random-init linear) + 100- and 50-shot; run b: SDCLR full + few-shot."""
    a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    write_eval(a, "bcl-linear-all-train", {"linear": accuracy(4, 2, 1), "knn@1": accuracy(3, 3, 0),
                                           "random-init linear": accuracy(1, 1, 1)})
    write_eval(a, "bcl-linear-100shot", {"linear, 100-shot": summarise_subsets([accuracy(4, 2, 0), accuracy(4, 4, 0)]),
                                         "random-init linear, 100-shot": summarise_subsets([accuracy(0, 0, 0)])},
               shots="100")
    write_eval(a, "bcl-linear-50shot", {"linear, 50-shot": summarise_subsets([accuracy(2, 2, 2), accuracy(1, 1, 1),
                                                                              accuracy(3, 3, 3)])}, shots="50")
    write_eval(b, "sdclr-linear-all-train", {"linear": accuracy(4, 4, 4)}, method="sdclr", epoch=50,
               protocol="sdclr-linear", sha="beef", split="(the whole train part)")
    write_eval(b, "sdclr-linear-split1_S_b", {"linear, few-shot": accuracy(2, 0, 0)}, method="sdclr", epoch=50,
               protocol="sdclr-linear", sha="beef", shots="few", split="(the whole train part)")
    return {"a": a, "b": b}


def invoke(*args):
    return CliRunner().invoke(main, ["compare", *map(str, args)])


def parse_markdown(text: str) -> list[dict[str, str]]:
    """The table's rows as {column title: cell}."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "").replace("-", "").replace(":", "")) <= {""}
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def test_table_puts_each_value_in_its_column(runs):
    result = invoke(runs["a"], runs["b"])
    assert result.exit_code == 0, result.output
    rows = parse_markdown(result.stdout)
    header = list(rows[0])
    assert header == ["run", "method", "split", "epoch", "protocol", "evaluation", "overall", "many", "medium",
                      "few", "group std", "100-shot", "50-shot", "few-shot"]
    assert [(r["run"], r["evaluation"]) for r in rows] == [
        (str(runs["a"]), "linear"), (str(runs["a"]), "knn@1"), (str(runs["a"]), "random-init linear"),
        (str(runs["b"]), "linear")]
    linear = rows[0]
    assert (linear["method"], linear["split"], linear["epoch"], linear["protocol"]) == \
        ("simclr", "ratio10_seed1", "200", "bcl-linear")
    # 4/4, 2/4, 1/4 right: overall 7/12, group std = np.std([100, 50, 25])
    assert (linear["overall"], linear["many"], linear["medium"], linear["few"]) == ("58.33", "100.00", "50.00", "25.00")
    assert linear["group std"] == f"{np.std([100, 50, 25]):.2f}" == "31.18"
    # 100-shot: subsets at 6/12 and 8/12 right -> mean 58.33, std 8.33; 50-shot: 50, 25, 75 -> 50 +- 20.41
    assert linear["100-shot"] == "58.33 +- 8.33"
    assert linear["50-shot"] == f"50.00 +- {np.std([50, 25, 75]):.2f}"
    assert linear["few-shot"] == "-"
    assert rows[1]["overall"] == "50.00" and rows[1]["few"] == "0.00" and rows[1]["100-shot"] == "-"
    assert rows[2]["overall"] == "25.00" and rows[2]["100-shot"] == "0.00 +- 0.00" and rows[2]["50-shot"] == "-"
    sdclr = rows[3]
    assert (sdclr["method"], sdclr["split"], sdclr["epoch"], sdclr["protocol"]) == \
        ("sdclr", "all-train", "50", "sdclr-linear")
    assert sdclr["overall"] == "100.00" and sdclr["few-shot"] == "16.67" and sdclr["100-shot"] == "-"


def test_csv_parses_back_to_the_reports_numbers(runs, tmp_path):
    out = tmp_path / "out" / "table.csv"
    result = invoke(runs["a"], runs["b"], "--csv", out, "--md", tmp_path / "table.md")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # "wrote" goes to stdout, after the table, as every other command says it
    assert result.stdout == (tmp_path / "table.md").read_text() + f"wrote {out}\nwrote {tmp_path / 'table.md'}\n"
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == ["run", "method", "split", "epoch", "protocol", "evaluation", "overall", "many", "medium",
                             "few", "group_std", "100-shot", "100-shot std", "50-shot", "50-shot std",
                             "few-shot", "few-shot std"]
    report = json.loads((runs["a"] / "eval" / "bcl-linear-all-train" / "eval.json").read_text())["reports"]["linear"]
    hundred = json.loads((runs["a"] / "eval" / "bcl-linear-100shot" / "eval.json").read_text())
    summary = hundred["reports"]["linear, 100-shot"]
    linear = rows[0]
    for column in ("overall", "many", "medium", "few", "group_std"):
        assert float(linear[column]) == report[column]
    assert float(linear["100-shot"]) == summary["overall"]
    assert float(linear["100-shot std"]) == summary["std_over_subsets"]["overall"]
    assert linear["few-shot"] == "" and linear["few-shot std"] == ""
    few = json.loads((runs["b"] / "eval" / "sdclr-linear-split1_S_b" / "eval.json").read_text())["reports"]
    assert float(rows[3]["few-shot"]) == few["linear, few-shot"]["overall"] == pytest.approx(100 / 6)
    assert rows[1]["100-shot"] == "" and rows[3]["few-shot std"] == ""
    assert not list(out.parent.glob(".*"))  # the atomic write left no temporary file


def test_run_argument_forms_and_no_duplicates(runs):
    whole = compare_runs([runs["a"]]).rows
    folder = runs["a"] / "eval" / "bcl-linear-all-train"
    one = compare_runs([folder]).rows
    assert [r.labels["evaluation"] for r in one] == ["linear", "knn@1", "random-init linear"]
    assert one[0].labels["run"] == str(runs["a"])  # named as the report records it
    assert not one[0].few_shot
    assert compare_runs([folder / "eval.json"]).rows[0].full == one[0].full
    assert [r.full for r in compare_runs([runs["a"] / "eval"]).rows] == [r.full for r in whole]
    again = compare_runs([runs["a"], folder, runs["a"] / "eval" / "bcl-linear-100shot" / "eval.json"]).rows
    assert len(again) == len(whole) == 3
    (runs["a"] / "eval" / ".bcl-linear-10shot.1234abcd.partial").mkdir()  # a report being written
    (runs["a"] / "eval" / ".bcl-linear-10shot.1234abcd.partial" / "eval.json").write_text("{")
    assert compare_runs([runs["a"]]).shots == ["100", "50"]


def test_exits_and_checkpoints_are_separate_rows(tmp_path):
    run = tmp_path / "sc"
    write_eval(run, "bcl-linear-all-train", {"linear": accuracy(4, 4, 4)})
    write_eval(run, "bcl-linear-all-train-ensemble-exit", {"linear": accuracy(2, 2, 2)}, exit="ensemble")
    write_eval(run, "bcl-linear-all-train-epoch100", {"linear": accuracy(1, 1, 1)}, epoch=100, sha="0ld")
    write_eval(run, "bcl-linear-100shot-epoch100", {"linear, 100-shot": summarise_subsets([accuracy(0, 0, 0)])},
               epoch=100, sha="0ld", shots="100")
    rows = parse_markdown(compare_runs([run]).markdown())
    assert [(r["epoch"], r["evaluation"], r["overall"], r["100-shot"]) for r in rows] == [
        ("200", "linear", "100.00", "-"), ("200", "linear (ensemble exit)", "50.00", "-"),
        ("100", "linear", "25.00", "0.00 +- 0.00")]


def bare_run(folder: Path) -> Path:
    """A run folder that has not been evaluated yet."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


NO_REPORTS = "no evaluation reports; run `fastlt linear-eval` on it first"
NOT_A_RUN = "not a run folder, a report folder, a folder of runs or an eval.json"


def test_runs_without_reports_are_left_out_in_one_line_on_stderr(runs, tmp_path):
    bare = bare_run(tmp_path / "runs" / "x")
    out = tmp_path / "table.csv"
    result = invoke(runs["a"], bare, "--csv", out)
    assert result.exit_code == 0, result.output
    assert result.stderr == f"left out: {bare} ({NO_REPORTS})\n"
    assert {row["run"] for row in parse_markdown(result.stdout)} == {str(runs["a"])}
    assert out.read_text() == compare_runs([runs["a"]]).csv()


def test_a_folder_of_runs_compares_each_run_in_it(runs, tmp_path):
    bare = bare_run(tmp_path / "runs" / "x")
    (tmp_path / "runs" / "plots").mkdir()  # not a run: said, not fatal
    (tmp_path / "runs" / ".a.partial").mkdir()  # hidden: never read
    result = invoke(tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert result.stdout == invoke(runs["a"], runs["b"]).stdout
    plots = tmp_path / "runs" / "plots"
    assert result.stderr == f"left out: {plots} ({NOT_A_RUN} (no eval.json found)); {bare} ({NO_REPORTS})\n"


def test_nothing_to_compare_is_one_line_error_and_no_output(runs, tmp_path):
    bare, other = bare_run(tmp_path / "new" / "x"), bare_run(tmp_path / "new" / "y")
    out = tmp_path / "table.csv"
    for targets, message in (([bare], f"nothing to compare: {bare} ({NO_REPORTS})"),
                             ([tmp_path / "new"], f"nothing to compare: {bare}, {other} ({NO_REPORTS})"),
                             ([runs["a"], tmp_path / "nowhere"], f"{tmp_path / 'nowhere'}: no such run folder, "
                                                                 "report folder or eval.json"),
                             ([runs["a"] / "checkpoints"], f"nothing to compare: {runs['a'] / 'checkpoints'} "
                                                           f"({NOT_A_RUN}"),
                             ([runs["a"] / "config.json"], f"{runs['a'] / 'config.json'}: not a fastlt evaluation "
                                                           "report")):
        result = invoke(*targets, "--csv", out)
        assert result.exit_code == 1 and result.stdout == ""
        assert result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1, result.stderr
    assert not out.exists() and not list(tmp_path.glob(".table.csv*"))
    broken = tmp_path / "broken.json"
    broken.write_text('{"reports": ')
    assert "not a readable evaluation report" in invoke(broken).stderr
    assert invoke().exit_code == 2


def test_real_run_end_to_end(tiny_run, tmp_path):
    """A real one-epoch run, evaluated by `fastlt linear-eval`, compared: the table holds eval.json's numbers."""
    run = tmp_path / "tiny"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval"))  # other tests evaluate tiny_run too
    evaluated = CliRunner().invoke(main, ["linear-eval", str(run), "--epochs", "2", "--knn", "1", "--device", "cpu",
                                          "--precision", "fp32"])
    assert evaluated.exit_code == 0, evaluated.output
    result = invoke(run, "--csv", tmp_path / "t.csv")
    assert result.exit_code == 0, result.output
    report = json.loads((run / "eval" / "bcl-linear-all-train" / "eval.json").read_text())["reports"]
    rows = parse_markdown(result.stdout)
    assert [(r["method"], r["split"], r["epoch"], r["protocol"], r["evaluation"]) for r in rows] == [
        ("simclr", "ratio10_seed1", "1", "bcl-linear", "linear"),
        ("simclr", "ratio10_seed1", "1", "bcl-linear", "knn@1")]
    for row, name in zip(rows, ("linear", "knn@1")):
        assert row["overall"] == f"{report[name]['overall']:.2f}" and row["few"] == f"{report[name]['few']:.2f}"
    parsed = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert float(parsed[1]["many"]) == report["knn@1"]["many"]
