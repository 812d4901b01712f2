"""fastlt plot and the per-class accuracy plot: PNGs that open at the expected size, a line per run where it has data,
one skipped-plots line, atomic writes, one-line errors."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from matplotlib.colors import to_rgba
from matplotlib.text import Text
from PIL import Image

from fastlt.cli import main
from fastlt.data.splits import class_groups
from fastlt.errors import FastltError
from fastlt.evaluate.plots import (
    CURVE_PLOTS, DPI, PANEL_INCHES, PER_CLASS_INCHES, UNKNOWN_OBJECTIVE, RunMetrics, curve_figure, legend_names,
    per_class_accuracy_plot, per_class_figure, plot_runs, read_metrics, run_objective,
)
from fastlt.measure.accuracy import accuracy_report
from fastlt.methods.boost import MemorisationBoost

RUN_COLOURS = [(31, 119, 180), (255, 127, 14)]  # matplotlib's C0 and C1: the first and second run's lines
GROUP_COLOURS = {"many": (31, 119, 180), "medium": (255, 127, 14), "few": (44, 160, 44)}  # tab:blue/orange/green
EPOCHS = 6


def trainer_record(epoch: int, loss: float, temperature: float) -> dict:
    """The keys trainer.train_one_epoch logs for every method."""
    return {"epoch": epoch, "step": 8 * epoch, "loss": loss, "lr": 0.1, "epoch_seconds": 0.7,
            "images_per_second": 680.0, "temperature": temperature}


def write_run(folder: Path, records: list[dict], method: str | None = None) -> Path:
    """A run folder; its config.json names ``method`` as a recipe dump does (empty axes: the preset's), or nothing."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"method": {"name": method, "objective": ""}} if method else {}))
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


def panels_of(image: Image.Image) -> int:
    """How many panel widths a curve PNG holds: the legend beside them is narrower than one (short run names)."""
    assert image.height == round(PANEL_INCHES[1] * DPI)
    return image.width // round(PANEL_INCHES[0] * DPI)


def test_every_plot_with_a_line_per_run_where_it_has_data(two_runs, tmp_path):
    out = tmp_path / "plots"
    result = CliRunner().invoke(main, ["plot", *map(str, two_runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    names = ["loss", "knn", "temperature", "bcl_weights"]
    assert result.stdout.splitlines() == [f"wrote {out / name}.png" for name in names]  # nothing skipped
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{name}.png" for name in names)  # no temporary file
    images = {name: png(out / f"{name}.png") for name in names}
    assert panels_of(images["loss"]) == panels_of(images["temperature"]) == 1  # one objective: unknown
    assert panels_of(images["knn"]) == 4  # overall, many, medium, few
    assert panels_of(images["bcl_weights"]) == 3  # many, medium, few: not the mean over all, 0.5 by construction
    for name in ("loss", "temperature"):  # both runs logged these: both lines (and legend entries)
        assert all(has_colour(images[name], rgb) for rgb in RUN_COLOURS), name
    for name in ("knn", "bcl_weights"):  # only the BCL run, the first, has them: no second line
        assert has_colour(images[name], RUN_COLOURS[0]) and not has_colour(images[name], RUN_COLOURS[1], 1), name


def test_missing_keys_skip_panels_and_plots_in_one_line(tmp_path):
    partial = write_run(tmp_path / "partial", bcl_records(("monitor_knn", "monitor_knn_few")))
    result = plot_runs([partial], tmp_path / "a")
    assert [p.name for p in result.written] == ["loss.png", "knn.png", "temperature.png", "bcl_weights.png"]
    assert panels_of(png(tmp_path / "a" / "knn.png")) == 2  # overall and few only
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
    run = RunMetrics("r", records, "infonce")
    assert run.series("monitor_knn") == ([2, 4, 6], [22.0, 24.0, 26.0])
    assert run.series("loss")[0] == list(range(1, EPOCHS + 1))
    assert run.series("monitor_knn_few") == ([], [])
    records[3]["monitor_knn"] = None  # the monitor logs null for a group without held-out samples
    assert RunMetrics("r", records, "infonce").series("monitor_knn") == ([2, 6], [22.0, 26.0])
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
    with pytest.raises(FastltError, match="loss.png: exists already; pass --overwrite to replace it"):
        plot_runs([first, second], out)
    assert (out / "loss.png").read_bytes() == b"old" and sorted(p.name for p in out.iterdir()) == ["loss.png"]
    result = plot_runs([first, second], out, overwrite=True)
    assert png(out / "loss.png").height == round(PANEL_INCHES[1] * DPI)  # replaced; the paths make a wide legend
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
    assert panels_of(png(tmp_path / "loss.png")) == 1


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


# Readable with many runs (issue 19): legend beside the axes, a look of its own for each run, one loss axes per
# objective, sensible ranges for single points, coinciding lines told, no panel constant by construction.

PLOTS = {plot.name: plot for plot in CURVE_PLOTS}
MIXED_METHODS = ("bcl-i", "selfcon", "simclr", "flatclr", "supcon")  # objectives infonce, supcon, infonce, flatnce


def mixed_runs(folder: Path, count: int, epochs: int = 12) -> list[Path]:
    """``count`` runs of MIXED_METHODS in turn: each loss on its objective's scale (SupCon's near 9, the others'
    near 5), the kNN monitor every fourth epoch, the same constant temperature everywhere, BCL weights for BCL."""
    runs = []
    for index in range(count):
        method = MIXED_METHODS[index % len(MIXED_METHODS)]
        start = 9.0 if method in ("selfcon", "supcon") else 5.0
        records = []
        for epoch in range(1, epochs + 1):
            record = trainer_record(epoch, start - 0.1 * epoch - 0.01 * index, 0.2)
            if epoch % 4 == 0:
                record |= {key: 30.0 + epoch + index + shift for key, shift in
                           (("monitor_knn", 0), ("monitor_knn_many", 10), ("monitor_knn_medium", 0),
                            ("monitor_knn_few", -10))}
            if method == "bcl-i":
                record |= {"weight_mean": 0.5, "weight_mean_many": 0.45 - 0.001 * epoch, "weight_mean_medium": 0.5,
                           "weight_mean_few": 0.55 + 0.001 * epoch}
            records.append(record)
        runs.append(write_run(folder / f"{method}-{index:02d}", records, method))
    return runs


def metrics_of(runs: list[Path]) -> list[RunMetrics]:
    return [RunMetrics(run.name, read_metrics(run), run_objective(run)) for run in runs]


def drawn(figure):
    """The figure laid out and rendered at its final size, as savefig does, and its one legend (wherever it is)."""
    figure.canvas.draw()
    (legend,) = figure.legends + [axes.get_legend() for axes in figure.axes if axes.get_legend()]
    return figure, legend


@pytest.mark.parametrize("count", [1, 20])
def test_legend_beside_the_axes_with_every_run_and_nothing_cut(tmp_path, count):
    runs = mixed_runs(tmp_path / "runs", count)
    result = plot_runs(runs, tmp_path / "plots")
    assert [path.name for path in result.written] == [f"{name}.png" for name in PLOTS]
    for path in result.written:
        assert png(path).height == round(PANEL_INCHES[1] * DPI)  # widened for the legend, never made shorter
    metrics = metrics_of(runs)
    for name, plot in PLOTS.items():
        figure, legend = drawn(curve_figure(plot, metrics))
        logged = [run for run in metrics if any(run.series(key)[0] for key, _ in plot.panels)]
        assert [text.get_text().split(" (same as")[0] for text in legend.get_texts()] == [r.name for r in logged]
        box, page = legend.get_window_extent(), figure.bbox
        for axes in figure.axes:
            assert not box.overlaps(axes.get_window_extent()), name
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, name
        (title,) = [text for text in figure.findobj(Text) if text.get_text() == plot.title]
        assert not box.overlaps(title.get_window_extent()), name


@pytest.mark.parametrize("count", [20, 30])
def test_every_run_has_its_own_colour_line_style_and_marker(tmp_path, count):
    figure = curve_figure(PLOTS["temperature"], metrics_of(mixed_runs(tmp_path, count, epochs=3)))
    looks = {(to_rgba(line.get_color()), line.get_linestyle(), line.get_marker()) for line in figure.axes[0].lines}
    assert len(figure.axes[0].lines) == count and len(looks) == count


def test_loss_axes_per_objective(tmp_path):
    runs = mixed_runs(tmp_path / "runs", 5)
    runs.append(write_run(tmp_path / "runs" / "no-method", [trainer_record(e, 1.0, 0.2) for e in range(1, 4)]))
    override = write_run(tmp_path / "runs" / "simclr-flat", [trainer_record(e, 4.0, 0.2) for e in range(1, 4)])
    (override / "config.json").write_text(json.dumps({"method": {"name": "simclr", "objective": "flatnce"}}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{")
    assert [run_objective(run) for run in runs] == ["infonce", "supcon", "infonce", "flatnce", "supcon",
                                                    UNKNOWN_OBJECTIVE]
    assert run_objective(override) == "flatnce" and run_objective(tmp_path / "broken") == UNKNOWN_OBJECTIVE
    figure, _ = drawn(curve_figure(PLOTS["loss"], metrics_of(runs)))
    panels = {axes.get_title(): [line.get_ydata()[0] for line in axes.lines] for axes in figure.axes}
    assert list(panels) == ["objective: infonce", "objective: supcon", "objective: flatnce",
                            f"objective: {UNKNOWN_OBJECTIVE}"]
    assert [len(starts) for starts in panels.values()] == [2, 2, 1, 1]
    infonce, supcon = figure.axes[:2]
    assert infonce.get_ylim()[1] < 6 and supcon.get_ylim()[0] > 7  # neither scale squashes the other


def test_a_single_point_gets_a_sensible_range(tmp_path):
    run = write_run(tmp_path / "one", [{**trainer_record(3, 9.5, 0.1), "monitor_knn": 10.0}], "selfcon")
    figure, _ = drawn(curve_figure(PLOTS["knn"], metrics_of([run])))
    (axes,) = figure.axes
    low, high = axes.get_ylim()
    assert low < 10.0 < high and high - low >= 5  # whole percent points, not 9.45 to 10.50
    assert axes.get_xlim() == (2, 4)
    line = axes.lines[0]
    assert line.get_marker() not in ("", "None") and line.get_markevery() == (0, 1)  # the point is drawn


def test_coinciding_lines_are_told_and_both_marked(tmp_path):
    records = [trainer_record(epoch, 5.0, 0.2) for epoch in range(1, 31)]
    runs = [write_run(tmp_path / name, records, "simclr") for name in ("first", "second")]
    runs.append(write_run(tmp_path / "third", [{**r, "temperature": 0.3} for r in records], "simclr"))
    figure, legend = drawn(curve_figure(PLOTS["temperature"], metrics_of(runs)))
    assert [text.get_text() for text in legend.get_texts()] == ["first", "second (same as first)", "third"]
    first, second, _ = figure.axes[0].lines
    assert first.get_markevery() != second.get_markevery()  # markers on different epochs: both lines show
    assert first.get_marker() != second.get_marker()


def test_no_bcl_weight_panel_is_constant_by_construction(tmp_path):
    run = write_run(tmp_path / "bcl", bcl_records(()), "bcl-i")
    assert {record["weight_mean"] for record in read_metrics(run)} == {0.5}  # what the dropped panel would draw
    figure, _ = drawn(curve_figure(PLOTS["bcl_weights"], metrics_of([run])))
    assert [axes.get_title() for axes in figure.axes] == ["many", "medium", "few"]
    for axes in figure.axes:
        assert np.ptp(axes.lines[0].get_ydata()) > 0, axes.get_title()


def test_per_class_title_clear_of_its_legend(tmp_path):
    report, counts, groups = per_class_inputs()
    title = "supcon-ratio100-20240405-153012: svm LT (long-tailed split)"  # a TS report's caption
    figure = per_class_figure(report["per_class"], counts, groups, title)
    figure.canvas.draw()
    (text,) = [t for t in figure.findobj(Text) if " ".join(t.get_text().split()) == title]
    box, legend = text.get_window_extent(), figure.legends[0].get_window_extent()
    assert not box.overlaps(legend)
    assert figure.bbox.x0 <= box.x0 and box.x1 <= figure.bbox.x1 and box.y1 <= figure.bbox.y1  # nor cut
