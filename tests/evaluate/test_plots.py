"""fastlt plot and the per-class accuracy plot: PNGs that open at the expected size, a line per run where it has data,
one skipped-plots line, atomic writes, one-line errors."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fastlt.cli import main
from fastlt.data.splits import class_groups
from fastlt.evaluate.plots import (
    DPI, PANEL_INCHES, PER_CLASS_INCHES, RunMetrics, legend_names, per_class_accuracy_plot, plot_runs,
    read_metrics,
)
from fastlt.evaluate.report import accuracy_report
from fastlt.methods.boost import MemorisationBoost

RUN_COLOURS = [(31, 119, 180), (255, 127, 14)]  # matplotlib's C0 and C1: the first and second run's lines
GROUP_COLOURS = {"many": (31, 119, 180), "medium": (255, 127, 14), "few": (44, 160, 44)}  # tab:blue/orange/green
EPOCHS = 6


def trainer_record(epoch: int, loss: float, temperature: float) -> dict:
    """The keys trainer.train_one_epoch logs for every method."""
    return {"epoch": epoch, "step": 8 * epoch, "loss": loss, "lr": 0.1, "epoch_seconds": 0.7,
            "images_per_second": 680.0, "temperature": temperature}


def write_run(folder: Path, records: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def bcl_records(monitor_keys: tuple[str, ...]) -> list[dict]:
    """A BCL run: every epoch's BCL statistics from the real MemorisationBoost.end_epoch, and the kNN monitor's
    ``monitor_keys`` on even epochs only (the monitor does not run every epoch)."""
    generator = torch.Generator().manual_seed(0)
    boost = MemorisationBoost(30, "bcl-i", sample_groups=torch.arange(30) % 3)
    records = []
    for epoch in range(1, EPOCHS + 1):
        boost.observe(torch.arange(30), torch.rand(30, generator=generator) + torch.arange(30) % 3)
        record = {**trainer_record(epoch, 10.0 - epoch, 0.2), **boost.end_epoch()}
        if epoch % 2 == 0:
            record |= {key: 20.0 + epoch for key in monitor_keys}
        records.append(record)
    return records


@pytest.fixture
def two_runs(tmp_path) -> list[Path]:
    """bcl: BCL weights and the full kNN monitor; plain: a SimCLR run with neither (cosine temperature)."""
    monitor = ("monitor_knn", "monitor_knn_many", "monitor_knn_medium", "monitor_knn_few")
    bcl = write_run(tmp_path / "runs" / "bcl", bcl_records(monitor))
    plain = write_run(tmp_path / "runs" / "plain", [trainer_record(e, 8.0 - e / 2, 1.0 - e / 10)
                                                    for e in range(1, EPOCHS + 1)])
    return [bcl, plain]


def png(path: Path) -> Image.Image:
    image = Image.open(path)
    image.load()  # decodes every byte: a truncated file fails here
    assert image.format == "PNG"
    return image.convert("RGB")


def has_colour(image: Image.Image, rgb: tuple[int, int, int], at_least: int = 10) -> bool:
    """Whether at least ``at_least`` pixels have exactly this colour (a line or marker drawn in it)."""
    pixels = np.asarray(image).reshape(-1, 3)
    return int((pixels == rgb).all(axis=1).sum()) >= at_least


def size_of(panels: int) -> tuple[int, int]:
    return round(PANEL_INCHES[0] * panels * DPI), round(PANEL_INCHES[1] * DPI)


def test_every_plot_with_a_line_per_run_where_it_has_data(two_runs, tmp_path):
    out = tmp_path / "plots"
    result = CliRunner().invoke(main, ["plot", *map(str, two_runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    names = ["loss", "knn", "temperature", "bcl_weights"]
    assert result.stdout.splitlines() == [f"wrote {out / name}.png" for name in names]  # nothing skipped
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{name}.png" for name in names)  # no temporary file
    images = {name: png(out / f"{name}.png") for name in names}
    assert images["loss"].size == images["temperature"].size == size_of(1)
    assert images["knn"].size == size_of(4)  # overall, many, medium, few
    assert images["bcl_weights"].size == size_of(4)  # all samples, many, medium, few
    for name in ("loss", "temperature"):  # both runs logged these: both lines (and legend entries)
        assert all(has_colour(images[name], rgb) for rgb in RUN_COLOURS), name
    for name in ("knn", "bcl_weights"):  # only the BCL run, the first, has them: no second line
        assert has_colour(images[name], RUN_COLOURS[0]) and not has_colour(images[name], RUN_COLOURS[1], 1), name


def test_missing_keys_skip_panels_and_plots_in_one_line(tmp_path):
    partial = write_run(tmp_path / "partial", bcl_records(("monitor_knn", "monitor_knn_few")))
    result = plot_runs([partial], tmp_path / "a")
    assert [p.name for p in result.written] == ["loss.png", "knn.png", "temperature.png", "bcl_weights.png"]
    assert png(tmp_path / "a" / "knn.png").size == size_of(2)  # overall and few only
    assert result.skipped_line() is None

    plain = write_run(tmp_path / "plain", [trainer_record(e, 5.0, 0.5) for e in range(1, 4)])
    result = CliRunner().invoke(main, ["plot", str(plain), "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"wrote {tmp_path / 'b' / 'loss.png'}", f"wrote {tmp_path / 'b' / 'temperature.png'}"]
    assert lines[2:] == ["skipped: knn (no monitor_knn keys: no kNN monitor ran); "
                         "bcl_weights (no weight_mean keys: not a BCL run)"]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["loss.png", "temperature.png"]


def test_series_keep_only_the_epochs_that_logged_a_key(tmp_path):
    records = read_metrics(write_run(tmp_path / "r", bcl_records(("monitor_knn",))))
    run = RunMetrics("r", records)
    assert run.series("monitor_knn") == ([2, 4, 6], [22.0, 24.0, 26.0])
    assert run.series("loss")[0] == list(range(1, EPOCHS + 1))
    assert run.series("monitor_knn_few") == ([], [])
    records[3]["monitor_knn"] = None  # the monitor logs null for a group without held-out samples
    assert RunMetrics("r", records).series("monitor_knn") == ([2, 6], [22.0, 26.0])
    assert set(records[0]) >= {"weight_mean", "weight_mean_many", "weight_mean_medium", "weight_mean_few"}


def test_live_run_last_line_is_ignored_but_other_bad_lines_are_errors(tmp_path):
    run = write_run(tmp_path / "live", [trainer_record(1, 5.0, 0.5)])
    with (run / "metrics.jsonl").open("a") as file:
        file.write('{"epoch": 2, "step": 16, "lo')  # the trainer is appending epoch 2 right now
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    (run / "metrics.jsonl").write_text('{"epoch": 1, "lo\n{"epoch": 2, "loss": 1.0}\n')
    result = CliRunner().invoke(main, ["plot", str(run), "--out", str(tmp_path / "p")])
    assert result.exit_code == 1 and result.stderr.startswith(f"error: {run / 'metrics.jsonl'}: line 1: not JSON")
    (run / "metrics.jsonl").write_text("")
    assert "no epochs logged yet" in CliRunner().invoke(main, ["plot", str(run), "--out", str(tmp_path / "p")]).stderr
    assert not (tmp_path / "p").exists()


def test_a_run_without_metrics_stops_before_any_file_is_written(two_runs, tmp_path):
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    out = tmp_path / "plots"
    result = CliRunner().invoke(main, ["plot", *map(str, two_runs), str(not_a_run), "--out", str(out)])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == f"error: {not_a_run}: not a run folder: no metrics.jsonl\n"
    assert not out.exists()
    assert CliRunner().invoke(main, ["plot", str(two_runs[0])]).exit_code == 2  # --out is required


def test_same_folder_names_are_told_apart_and_files_replaced(tmp_path):
    first = write_run(tmp_path / "x" / "run", [trainer_record(1, 5.0, 0.5)])
    second = write_run(tmp_path / "y" / "run", [trainer_record(1, 4.0, 0.5)])
    out = tmp_path / "plots"
    out.mkdir()
    (out / "loss.png").write_bytes(b"old")
    result = plot_runs([first, second], out)
    assert png(out / "loss.png").size == size_of(1)
    assert result.skipped == {"knn": "no monitor_knn keys: no kNN monitor ran",
                              "bcl_weights": "no weight_mean keys: not a BCL run"}
    assert legend_names([first, second]) == [str(first), str(second)]
    assert legend_names([first, tmp_path / "other"]) == ["run", "other"]


def test_real_run(tiny_run, tmp_path):
    """The metrics.jsonl of a real one-epoch SimCLR run (the digits recipe monitors its last epoch): loss, the
    held-out kNN and temperature drawn, BCL weights skipped."""
    result = plot_runs([tiny_run], tmp_path)
    assert "monitor_knn" in read_metrics(tiny_run)[-1]
    assert [p.name for p in result.written] == ["loss.png", "knn.png", "temperature.png"]
    assert set(result.skipped) == {"bcl_weights"}
    assert png(tmp_path / "loss.png").size == size_of(1)


def per_class_inputs(num_classes: int = 10):
    """A report's per-class accuracy (one class without test images) and groups from an LT split's counts."""
    rng = np.random.default_rng(0)
    counts = np.array([100, 70, 50, 35, 25, 18, 12, 9, 6, 4])[:num_classes]
    labels = np.repeat(np.arange(num_classes - 1), 20)  # the last class has no test image
    predictions = np.where(rng.random(len(labels)) < 0.6, labels, 0)
    report = accuracy_report(predictions, labels, num_classes, class_groups(counts, "thirds"))
    return report, counts, class_groups(counts, "thirds")


def test_per_class_plot(tmp_path):
    report, counts, groups = per_class_inputs()
    assert report["per_class"][-1] is None
    path = per_class_accuracy_plot(report["per_class"], counts, groups, tmp_path / "sub" / "per_class.png", "a title")
    assert path == tmp_path / "sub" / "per_class.png"
    image = png(path)
    assert image.size == (round(PER_CLASS_INCHES[0] * DPI), round(PER_CLASS_INCHES[1] * DPI))
    for name, rgb in GROUP_COLOURS.items():  # each group's mean is drawn as a solid dashed segment
        assert has_colour(image, rgb), name
    assert [p.name for p in path.parent.iterdir()] == ["per_class.png"]


def test_per_class_plot_takes_eval_json_values_and_zero_counts(tmp_path):
    """Groups as eval.json lists, NaN accuracy, a class with no training image (no place on a log axis), no groups."""
    report, counts, groups = per_class_inputs()
    counts[3] = 0
    accuracy = np.array([np.nan if a is None else a for a in report["per_class"]])
    lists = {name: ids.tolist() for name, ids in groups.items()}
    png(per_class_accuracy_plot(accuracy, counts.tolist(), lists, tmp_path / "a.png", "t"))
    image = png(per_class_accuracy_plot(report["per_class"], counts, {}, tmp_path / "b.png", "t"))
    assert not has_colour(image, GROUP_COLOURS["many"], 1)  # ungrouped classes are grey


def test_per_class_plot_rejects_mismatched_inputs(tmp_path):
    report, counts, groups = per_class_inputs()
    with pytest.raises(ValueError, match="one count per class"):
        per_class_accuracy_plot(report["per_class"], counts[:-1], groups, tmp_path / "x.png", "t")
    with pytest.raises(ValueError, match="few holds class ids outside"):
        per_class_accuracy_plot(report["per_class"], counts, {**groups, "few": [0, 10]}, tmp_path / "x.png", "t")
    assert not (tmp_path / "x.png").exists()

