"""Weights & Biases as an optional logger (fastlt/wandb_log.py), in offline mode: nothing is sent anywhere.

An offline W&B run is read back from its transaction log, RUN/wandb/offline-run-*/run-ID.wandb: wandb
keeps no local summary or config file offline and no longer ships a reader for the log. wandb's service
process may still be writing the log when ``run.finish()`` returns, so the tests wait for its exit record.
"""
import json
import struct
import sys
import time
from pathlib import Path

import pytest

from fastlt.errors import FastltError
from fastlt.evaluate.protocol import linear_eval
from fastlt.recipe import recipe_from_dict
from fastlt.train.trainer import pretrain, resume_run
from fastlt.wandb_log import ID_FILE

pb = pytest.importorskip("wandb.proto.wandb_internal_pb2",
                         reason="the optional wandb package (pip install 'fastlt[wandb]') is not installed")

ROOT = Path(__file__).resolve().parents[2]
SPLIT = ROOT / "splits" / "digits_lt" / "ratio10_seed1.npy"


@pytest.fixture(autouse=True)
def quiet_local_wandb(tmp_path, monkeypatch):
    """wandb's own settings, cache and messages kept out of the user's home and the test output."""
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the recipe's mode, offline by default, decides


def tiny(store, out_dir, name, **train):
    return recipe_from_dict({
        "data": {"store": str(store), "split": str(SPLIT)},
        "model": {"width": 4, "projector_hidden": 16, "projector_out": 8},
        "optim": {"lr": 0.1, "warmup_epochs": 1},
        "train": {"epochs": 3, "batch_size": 128, "out_dir": str(out_dir), "progress": False, "precision": "fp32",
                  "device": "cpu", "name": name, "wandb": True, **train},
    }, "test")


def log_records(log: Path) -> list:
    """The records of a W&B transaction log: a 7-byte header, then LevelDB-style 32 KiB blocks of chunks, each
    behind a 7-byte header (crc32, length, type: 1 a whole record, 2 its first chunk, 3 a middle one, 4 its last)."""
    data, block, position, pending, found = log.read_bytes(), 32 * 1024, 7, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a chunk: zeros
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if position + 7 + length > len(data):  # the chunk is still being written
            break
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            found.append(pb.Record.FromString(pending))
            pending = b""
    return found


def offline_runs(run: Path, wait: float = 60.0) -> list[list]:
    """Each offline W&B run written in the run folder (one per wandb.init), oldest first, once written to the end."""
    deadline = time.monotonic() + wait
    while True:
        runs = [log_records(next(folder.glob("run-*.wandb")))
                for folder in sorted((run / "wandb").glob("offline-run-*"))]
        if all(of_kind(records, "exit") for records in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.05)


def values(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def of_kind(records: list, kind: str) -> list:
    return [getattr(record, kind) for record in records if record.WhichOneof("record_type") == kind]


def history(records: list) -> list[dict]:
    return [{"epoch": entry.step.num} | {key: value for key, value in values(entry.item).items()
                                         if not key.startswith("_")} for entry in of_kind(records, "history")]


def metrics(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in line.items()
             if isinstance(value, (int, float)) and not isinstance(value, bool)} for line in lines]


def test_a_run_logs_its_metrics_recipe_and_hardware_choices_offline(digits_store, tmp_path):
    run = pretrain(tiny(digits_store, tmp_path, "w", monitor_every=2, wandb_group="sweep-a"))
    [records] = offline_runs(run)
    assert history(records) == metrics(run) and "monitor_knn_few" in history(records)[-1]
    [started] = of_kind(records, "run")
    assert (started.project, started.run_group, started.display_name) == ("fastlt", "sweep-a", "w")
    assert started.run_id == (run / "wandb" / ID_FILE).read_text().strip()
    config = values(started.config.update)
    assert {key: config[key] for key in json.loads((run / "config.json").read_text())} == \
           json.loads((run / "config.json").read_text())
    assert config["hardware"] == json.loads((run / "run.json").read_text())["hardware"]


def test_a_resumed_run_continues_the_same_wandb_run(digits_store, tmp_path):
    run = pretrain(tiny(digits_store, tmp_path, "r"), until_epoch=1)
    resume_run(run)
    first, second = offline_runs(run)
    assert of_kind(first, "run")[0].run_id == of_kind(second, "run")[0].run_id
    assert history(first) + history(second) == metrics(run)


def test_linear_eval_adds_its_reports_to_the_runs_summary(digits_store, tmp_path):
    run = pretrain(tiny(digits_store, tmp_path, "e", epochs=1))
    result = linear_eval(run, overrides={"protocol": "bcl", "epochs": 2, "knn": [1]})
    [folder] = result.folders.values()
    reports = json.loads((folder / "eval.json").read_text())["reports"]
    evaluation = offline_runs(run)[-1]
    assert of_kind(evaluation, "run")[0].run_id == (run / "wandb" / ID_FILE).read_text().strip()
    summary = {key: value for record in of_kind(evaluation, "summary") for key, value in values(record.update).items()
               if key.startswith("eval/")}
    expected = {f"eval/{folder.name}/{row}/{key}": value for row, report in reports.items()
                for key, value in report.items() if isinstance(value, (int, float))}
    assert summary == expected and f"eval/{folder.name}/knn@1/few" in summary


def test_a_bad_wandb_mode_is_one_line():
    with pytest.raises(FastltError) as error:
        recipe_from_dict({"train": {"wandb_mode": "cloud"}}, "r.toml")
    assert str(error.value) == "r.toml: train.wandb_mode: must be one of offline, online, disabled, got 'cloud'"


def test_wandbs_refusal_is_one_line(digits_store, tmp_path, monkeypatch):
    """Online without a login: W&B refuses before it sends anything (and the server named is nobody's)."""
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    with pytest.raises(FastltError, match=r"train.wandb: W&B refused to start the run \(.*API key") as error:
        pretrain(tiny(digits_store, tmp_path / "runs", "o", wandb_mode="online"))
    assert "\n" not in str(error.value)


def test_a_missing_wandb_is_one_line_saying_what_to_install(digits_store, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an import without the package gives
    with pytest.raises(FastltError, match=r"train.wandb: .*pip install 'fastlt\[wandb\]'") as error:
        pretrain(tiny(digits_store, tmp_path / "runs", "m"))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "runs").exists()
