"""`fastlt bench linear-eval RUN`: the wall time of BCL's protocol against SDCLR's on one checkpoint.

BCL's protocol extracts frozen features once and trains the probe on the cached features;
SDCLR's trains its fc through the frozen backbone on augmented images every epoch. Both run
through ``fastlt.evaluate.protocol.linear_eval`` exactly as ``fastlt linear-eval`` runs them,
each timed end to end (checkpoint, store, features, probe, report) into a temporary folder.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from fastlt.bench.report import say, table
from fastlt.bench.timing import machine_description, synchronize
from fastlt.errors import FastltError
from fastlt.evaluate.protocol import linear_eval
from fastlt.checkpoint import CHECKPOINTS, LAST, PREVIOUS
from fastlt.hardware import resolve_device, resolve_precision

PROTOCOLS = ("bcl", "sdclr")


def run_linear_eval_benchmark(target: Path, store: Path | None = None, device: str = "auto",
                              precision: str = "auto", epochs: int | None = None, sdclr_epochs: int | None = None,
                              sdclr_few_shot_epochs: int | None = None) -> dict[str, Any]:
    """Time ``linear_eval`` with protocol bcl, then sdclr, on ``target``; the reports go to a temporary folder."""
    target = Path(target)  # a missing checkpoint is one line before anything is printed (read once, by linear_eval)
    candidates = [target / CHECKPOINTS / LAST, target / CHECKPOINTS / PREVIOUS] if target.is_dir() else [target]
    if not any(candidate.is_file() for candidate in candidates):
        raise FastltError(f"{candidates[0]}: checkpoint not found")
    torch_device = resolve_device(device, f"--device {device}")
    chosen = resolve_precision(precision, torch_device, f"--precision {precision}")
    settings = {"epochs": epochs, "sdclr_epochs": sdclr_epochs, "sdclr_few_shot_epochs": sdclr_few_shot_epochs}
    settings = {key: value for key, value in settings.items() if value is not None}
    protocols: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fastlt-bench-eval-") as scratch:
        for protocol in PROTOCOLS:
            say(f"bench linear-eval: {protocol} protocol on {target} ...")
            synchronize(torch_device)
            started = time.perf_counter()
            overrides = {**settings, "protocol": protocol}
            result = linear_eval(target, Path(scratch) / protocol, torch_device, store, overrides,
                                 precision=chosen.name)
            synchronize(torch_device)
            elapsed = time.perf_counter() - started
            protocols[protocol] = {"seconds": round(elapsed, 3), "evaluations": sorted(result.folders)}
    bcl, sdclr = protocols["bcl"]["seconds"], protocols["sdclr"]["seconds"]
    return {
        "benchmark": "linear-eval",
        "machine": machine_description(torch_device),
        "settings": {"target": str(target), "store": str(store) if store else "the run's recipe's",
                     "device": str(torch_device), "precision": chosen.name, "overrides": settings,
                     "timed": "each protocol end to end: checkpoint, store, features, probe or fc, reports"},
        "protocols": protocols,
        "sdclr_over_bcl": round(sdclr / bcl, 3) if bcl > 0 else None,
    }


def linear_eval_table(result: dict[str, Any]) -> str:
    """Both protocols' wall times and their ratio."""
    rows = [[name, f"{entry['seconds']:.1f} s", ", ".join(entry["evaluations"])]
            for name, entry in result["protocols"].items()]
    ratio = result["sdclr_over_bcl"]
    cpu, gpu = result["machine"]["cpu"], result["machine"]["gpu"]
    return "\n".join([f"{result['settings']['target']} on {result['settings']['device']} "
                      f"({cpu['name']}, {cpu['cores']} cores" + (f", {gpu}" if gpu else "") + ")",
                      table(["protocol", "wall time", "evaluations"], rows, [False, True, False]),
                      f"SDCLR's protocol takes {ratio:.2f}x BCL's" if ratio else ""]).rstrip()
