"""`fastlt bench views`: two SimCLR views per image per second, fastlt against the other ways to make them.

Contenders, in one run on one machine, on the same synthetic CIFAR-sized uint8 images:

1. fastlt's batched SimCLRViews (the recipe's [views]), eager, on the device;
2. the same with ``SimCLRViews.apply`` under ``torch.compile`` (fixed shapes; compile time apart);
3. the reference repositories' per-image PIL + torchvision.transforms pipeline in a DataLoader
   with one worker per core: the baseline every ratio is taken against;
4. kornia.augmentation on the batch tensor (per-sample parameters);
5. DALI's CPU pipeline, fed from memory, one thread per core.

and for each BCL recipe, fastlt's views with the boosted RandAugment stage (eager and compiled) built as the trainer
builds it (``build_views`` with a MemorisationBoost whose weights are uniform random) against
per-image PIL + torchvision RandAugment at the same per-image strengths. A contender that
cannot run here is reported as skipped with its reason, never left out. A "where the time goes"
breakdown times each stage of one fastlt view on the same batch.

A timed pass is ``batches`` batches (the DataLoader contenders: one epoch over that many
images); the rate is the best pass after a warm-up pass.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from fastlt.augment import functional as F
from fastlt.augment.views import SimCLRViews, ViewConfig
from fastlt.bench.external import dali_views, kornia_views, unavailable
from fastlt.bench.reference import PILImages, ReferenceViews, reference_loader
from fastlt.bench.report import rate, say, table
from fastlt.bench.timing import as_record, best_time, machine_description, timed_once, usable_cores
from fastlt.errors import FastltError
from fastlt.methods import build_views, resolve_axes
from fastlt.methods.boost import MAPPINGS, MemorisationBoost
from fastlt.recipe import Recipe, find_recipe, load_recipe
from fastlt.hardware import resolve_device

DEFAULT_RECIPE = "cifar100_lt/simclr"
DEFAULT_BCL = ("cifar100_lt/bcl-i", "cifar100_lt/bcl-d")
IMAGE_SIZE = 32  # CIFAR-sized synthetic images
GOAL_SIMCLR_RATIO = 10.0  # fastlt >= 10x the per-image PIL pipeline, and >= DALI's CPU pipeline
GOAL_BCL_RATIO = 5.0  # fastlt's BCL views >= 5x per-image PIL + RandAugment
REFERENCE = "per-image PIL + torchvision"
COMPILED = "fastlt, torch.compile"
BCL_EAGER = "fastlt + boosted RandAugment"
BCL_COMPILED = "fastlt + boosted RandAugment, torch.compile"


@dataclass
class Outcome:
    """One contender's result: a rate, or the one-line reason it could not run."""

    name: str
    group: str  # "simclr", or the BCL recipe's method name: ratios are taken within a group
    where: str  # what ran it: the torch device, or the host's workers / threads
    images_per_s: float | None = None
    seconds_per_pass: float | None = None
    skipped: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def record(self, baseline: float | None) -> dict[str, Any]:
        """The JSON entry, with the ratio to its group's per-image PIL pipeline."""
        ratio = self.images_per_s / baseline if self.images_per_s and baseline else None
        entry = {"name": self.name, "group": self.group, "where": self.where,
                 "status": "skipped" if self.skipped else "ok"}
        if self.skipped:
            entry["reason"] = self.skipped
        else:
            entry |= {"images_per_s": round(self.images_per_s, 1), "seconds_per_pass": round(self.seconds_per_pass, 6),
                      "ratio_to_reference": None if ratio is None else round(ratio, 3)}
        return entry | self.details


def one_line(error: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def synthetic_images(count: int, size: int = IMAGE_SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 [count, size, size, 3] images (pixels are never looked at, only pushed) and labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    return images, np.arange(count, dtype=np.int64) % 100


def read_recipe(name: str, option: str) -> tuple[Recipe, str]:
    """(recipe, its path as given to the user) of a recipe file or shipped name; errors name the option."""
    try:
        path = find_recipe(name)
    except FastltError as error:
        raise FastltError(f"{option} {name}: {error}") from None
    return load_recipe(path), str(path)


def pass_rate(run: Callable[[], object], batch: int, batches: int, device: torch.device,
              repeats: int) -> tuple[float, float]:
    """(images/s, seconds) of the best pass of ``batches`` calls of ``run`` on a batch of ``batch`` images."""

    def one_pass() -> None:
        for _ in range(batches):
            run()

    seconds = best_time(one_pass, device, repeats)
    return batch * batches / seconds, seconds


def loader_rate(dataset: PILImages, batch: int, workers: int, repeats: int) -> tuple[float, float]:
    """(images/s, seconds) of the best epoch of the reference DataLoader over ``dataset``, after a warm-up
    epoch that starts the worker processes (kept alive between epochs, as the reference runs do)."""
    loader = reference_loader(dataset, batch, workers)

    def epoch() -> None:
        for _ in loader:
            pass

    seconds = best_time(epoch, torch.device("cpu"), repeats)
    return len(dataset) / seconds, seconds  # the loader goes with this frame, and its workers with it


@dataclass
class Setup:
    """Everything the contenders share: the images, where they run, how long a pass is."""

    images: np.ndarray  # [batch * batches, H, W, 3] uint8, host
    labels: np.ndarray
    batch: int
    batches: int
    repeats: int
    device: torch.device
    workers: int

    @property
    def host_batch(self) -> np.ndarray:
        """The first batch, as the host contenders (DALI) receive it."""
        return self.images[:self.batch]

    def device_batch(self) -> torch.Tensor:
        """The first batch on the device as NativeLoader yields it: uint8 NCHW with channels_last memory."""
        return torch.from_numpy(self.host_batch).to(self.device).permute(0, 3, 1, 2)


def fastlt_eager(setup: Setup, views: SimCLRViews, name: str, group: str,
                 strengths: Callable[[torch.Generator], torch.Tensor | None] = lambda generator: None) -> Outcome:
    """fastlt's views as the trainer runs them: per-sample strengths drawn, then two views of the batch."""
    images = setup.device_batch()
    generator = torch.Generator(setup.device).manual_seed(0)
    per_s, seconds = pass_rate(lambda: views.many(images, generator, 2, strengths(generator)),
                               setup.batch, setup.batches, setup.device, setup.repeats)
    return Outcome(name, group, setup.device.type, per_s, seconds)


def fastlt_compiled(setup: Setup, views: SimCLRViews, name: str, group: str,
                    strengths: Callable[[torch.Generator], torch.Tensor | None] = lambda generator: None) -> Outcome:
    """The same with ``SimCLRViews.apply`` under torch.compile (static shapes), as the trainer compiles it;
    the draws stay eager, as they are cheap.

    The compile is timed cold (inductor's caches off for it), as a first run on a new machine pays it.
    """
    where = setup.device.type
    images = setup.device_batch()
    generator = torch.Generator(setup.device).manual_seed(0)
    try:
        views.enable_compile()

        def run() -> tuple[torch.Tensor, ...]:
            return views.many(images, generator, 2, strengths(generator))

        from torch._inductor import config as inductor_config

        with inductor_config.patch(force_disable_caches=True), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "dynamo_pgo force disabled": that is the point here
            compile_seconds, _ = timed_once(run, setup.device)  # cold, as on a new machine
        per_s, seconds = pass_rate(run, setup.batch, setup.batches, setup.device, setup.repeats)
    except Exception as error:  # noqa: BLE001 - no compiler, an inductor failure: reported, not fatal
        return Outcome(name, group, where, skipped=f"torch.compile failed: {one_line(error)}")
    finally:
        torch._dynamo.reset()
    return Outcome(name, group, where, per_s, seconds, details={"compile_seconds": round(compile_seconds, 3)})


def per_image_reference(setup: Setup, views: ReferenceViews, name: str, group: str) -> Outcome:
    """The reference DataLoader over the images, ``workers`` processes, two views per image."""
    dataset = PILImages(setup.images, setup.labels, views)
    per_s, seconds = loader_rate(dataset, setup.batch, setup.workers, setup.repeats)
    return Outcome(name, group, f"cpu, {setup.workers} workers", per_s, seconds,
                   details={"pipeline": views.describe()})


def kornia_contender(setup: Setup, config: ViewConfig) -> Outcome:
    """kornia.augmentation on the float batch, two calls for two views."""
    name, where = "kornia.augmentation", setup.device.type
    reason = unavailable("kornia")
    if reason:
        return Outcome(name, "simclr", where, skipped=reason)
    try:
        augment = kornia_views(config).to(setup.device)
        images = setup.device_batch()

        def run() -> tuple[torch.Tensor, ...]:
            pixels = F.to_float(images)
            return augment(pixels), augment(pixels)

        per_s, seconds = pass_rate(run, setup.batch, setup.batches, setup.device, setup.repeats)
    except Exception as error:  # noqa: BLE001 - a third-party failure is a result, not a crash
        return Outcome(name, "simclr", where, skipped=f"kornia failed: {one_line(error)}")
    return Outcome(name, "simclr", where, per_s, seconds)


def dali_contender(setup: Setup, config: ViewConfig) -> Outcome:
    """DALI's CPU pipeline (device_id=None), one thread per worker slot, two views per image."""
    name, where = "DALI, CPU pipeline", f"cpu, {setup.workers} threads"
    reason = unavailable("dali")
    if not reason and config.blur_p > 0:
        reason = "the DALI contender has no Gaussian blur stage (views.blur_p > 0)"
    if reason:
        return Outcome(name, "simclr", where, skipped=reason)
    batch = np.ascontiguousarray(setup.host_batch)
    try:
        run = dali_views(config, lambda: batch, setup.batch, max(1, setup.workers))
        per_s, seconds = pass_rate(run, setup.batch, setup.batches, torch.device("cpu"), setup.repeats)
    except Exception as error:  # noqa: BLE001 - DALI failing on this machine is a result, not a crash
        return Outcome(name, "simclr", where, skipped=f"DALI failed: {one_line(error)}")
    return Outcome(name, "simclr", where, per_s, seconds)


def uniform_boost(recipe: Recipe, batch: int, device: torch.device, option: str) -> MemorisationBoost:
    """The recipe's MemorisationBoost, as build_method makes it, with per-sample weights uniform in [0, 1]
    (a mid-training state; in epoch 1 every weight is 0 and no RandAugment op ever fires)."""
    strength = resolve_axes(recipe).view_strength
    if strength not in MAPPINGS:
        raise FastltError(f"{option}: method {recipe.method.name!r} has no boosted RandAugment views "
                          f"(view strength {strength!r}); give a BCL recipe such as cifar100_lt/bcl-i")
    boost = MemorisationBoost(batch, strength, recipe.method.boost_momentum).to(device)
    generator = torch.Generator(device).manual_seed(1)
    boost.weights.copy_(torch.rand(batch, generator=generator, device=device))
    return boost


def bcl_contenders(setup: Setup, recipe: Recipe, name: str, compile: bool) -> list[Outcome]:
    """fastlt's boosted views, eager and compiled, against the per-image PIL + RandAugment pipeline,
    at the same strengths."""
    boost = uniform_boost(recipe, setup.batch, setup.device, f"--bcl {name}")
    indices = torch.arange(setup.batch, device=setup.device)
    group = recipe.method.name
    ops = MAPPINGS[boost.mapping]
    details = {"recipe": name, "randaugment_ops": ops}

    def strengths(generator: torch.Generator) -> torch.Tensor:
        return boost.strengths(indices, generator)

    say(f"  {group}: {REFERENCE} + RandAugment ...")
    reference = per_image_reference(setup, ReferenceViews(recipe.views, 2, ops, boost.mapping),
                                    f"{REFERENCE} + RandAugment", group)
    reference.details["recipe"] = name
    say(f"  {group}: fastlt views + boosted RandAugment ({ops} op{'s' * (ops > 1)}) ...")
    outcomes = [reference, fastlt_eager(setup, build_views(recipe, boost), BCL_EAGER, group, strengths)]
    if compile:
        say(f"  {group}: the same under torch.compile ...")
        outcomes.append(fastlt_compiled(setup, build_views(recipe, boost), BCL_COMPILED, group, strengths))
    else:
        outcomes.append(Outcome(BCL_COMPILED, group, setup.device.type, skipped="--no-compile"))
    for outcome in outcomes[1:]:
        outcome.details |= details
    return outcomes


def breakdown(setup: Setup, config: ViewConfig) -> dict[str, Any]:
    """Seconds of each stage of one fastlt view on the same batch, and its share of the whole view.

    Stages run on the crop's output; the colour jitter includes the hue shift, which is also
    timed alone. Blur and RandAugment are timed even where the recipe leaves them off.
    """
    device = setup.device
    images = setup.device_batch()
    views = SimCLRViews(config)
    generator = torch.Generator(device).manual_seed(2)
    batch, _, height, width = images.shape
    pixels = F.to_float(images)
    params = views.sample(batch, height, width, generator)
    size = (config.size, config.size)
    crop = F.resized_crop(pixels, params.boxes, size, params.flip, config.interpolation).clamp_(0.0, 1.0)
    hue = torch.where(params.jitter, params.jitter_factors[:, 3], 0.0)
    grey = params.grayscale[:, None, None, None]
    parts: dict[str, Callable[[], object]] = {
        "one_view": lambda: views.apply(pixels, params),
        "to_float": lambda: F.to_float(images),
        "sample": lambda: views.sample(batch, height, width, generator),
        "resized_crop": lambda: F.resized_crop(pixels, params.boxes, size, params.flip,
                                               config.interpolation).clamp_(0.0, 1.0),
        "colour_jitter": lambda: SimCLRViews._jitter(crop, params),
        "hue_shift": lambda: F.adjust_hue(crop, hue),
        "grayscale": lambda: torch.where(grey, F.rgb_to_grayscale(crop, 1), crop),
        "blur": lambda: F.gaussian_blur(crop, params.blur_sigma, config.blur_kernel_size),
    }
    for mapping, ops in MAPPINGS.items():
        boost = MemorisationBoost(batch, mapping).to(device)
        boost.weights.copy_(torch.rand(batch, generator=generator, device=device))
        strength = boost.strengths(torch.arange(batch, device=device), generator)
        parts[f"randaugment_{mapping}"] = (lambda stage=boost.stage, strength=strength:
                                           stage.apply(crop, stage.draw(generator, strength), strength))
    timings = {name: best_time(run, device, setup.repeats) for name, run in parts.items()}
    whole = timings["one_view"]
    in_recipe = {"blur": config.blur_p > 0, "randaugment_bcl-i": False, "randaugment_bcl-d": False}
    return {
        "batch": batch,
        "where": device.type,
        "note": "one view; stages timed apart on the crop's output; colour_jitter includes hue_shift; "
                "one_view = crop + jitter + grayscale (+ blur where on), the recipe's view",
        "parts": {name: {"seconds": round(seconds, 6), "images_per_s": round(batch / seconds, 1),
                         "share_of_view": round(seconds / whole, 3), "in_recipe_view": in_recipe.get(name, True)}
                  for name, seconds in timings.items()},
    }


def goals(outcomes: list[Outcome], baselines: dict[str, float | None]) -> list[dict[str, Any]]:
    """The targets, each with the measured value and whether it is met (None when a side was not measured)."""
    found = {(o.group, o.name): o.images_per_s for o in outcomes if not o.skipped}
    dali = found.get(("simclr", "DALI, CPU pipeline"))
    results = []

    def goal(text: str, value: float | None, target: float) -> None:
        results.append({"goal": text, "value": None if value is None else round(value, 3),
                        "met": None if value is None else value >= target})

    for name in ("fastlt, eager", COMPILED):
        own = found.get(("simclr", name))
        if own is None:
            continue
        ratio = own / baselines["simclr"] if baselines.get("simclr") else None
        goal(f"{name} >= {GOAL_SIMCLR_RATIO:g}x {REFERENCE}", ratio, GOAL_SIMCLR_RATIO)
        goal(f"{name} >= DALI CPU pipeline (ratio)", own / dali if dali else None, 1.0)
    for group, baseline in baselines.items():
        for name in (BCL_EAGER, BCL_COMPILED):
            own = found.get((group, name))
            if group != "simclr" and own is not None:
                goal(f"{group}: {name} >= {GOAL_BCL_RATIO:g}x {REFERENCE} + RandAugment",
                     own / baseline if baseline else None, GOAL_BCL_RATIO)
    return results


def run_views_benchmark(batch: int = 512, batches: int | None = None, repeats: int = 3,
                        recipe: str = DEFAULT_RECIPE, bcl: tuple[str, ...] = DEFAULT_BCL, device: str = "auto",
                        compile: bool = True, workers: int | None = None) -> dict[str, Any]:
    """Run every contender and the breakdown; returns the result (machine, settings, contenders, goals)."""
    if batch < 2 or repeats < 1 or (batches is not None and batches < 1):
        raise FastltError(f"bench views: --batch must be >= 2, --repeats and --batches >= 1 "
                          f"(got {batch}, {repeats}, {batches})")
    simclr_recipe, simclr_path = read_recipe(recipe, "--recipe")
    bcl_recipes = [(name, *read_recipe(name, "--bcl")) for name in bcl]
    for name, bcl_recipe, _ in bcl_recipes:  # refuse a non-BCL recipe before anything runs
        uniform_boost(bcl_recipe, 2, torch.device("cpu"), f"--bcl {name}")
    cores = usable_cores()
    workers = cores if workers is None else workers
    batches = batches or max(4, 2 * cores)
    torch_device = resolve_device(device, f"--device {device}")
    images, labels = synthetic_images(batch * batches)
    setup = Setup(images, labels, batch, batches, repeats, torch_device, workers)
    config = simclr_recipe.views
    say(f"bench views: batch {batch}, {batches} batches a pass, best of {repeats}, fastlt on {torch_device}, "
        f"{workers} workers")

    # The DataLoader contenders fork worker processes: run them before anything starts compiler threads.
    say(f"  {REFERENCE} ...")
    outcomes = [per_image_reference(setup, ReferenceViews(config), REFERENCE, "simclr")]
    say("  fastlt, eager ...")
    outcomes.append(fastlt_eager(setup, SimCLRViews(config), "fastlt, eager", "simclr"))
    if compile:
        say("  fastlt, torch.compile (a cold compile takes about a minute on a CPU) ...")
        outcomes.append(fastlt_compiled(setup, SimCLRViews(config), COMPILED, "simclr"))
    else:
        outcomes.append(Outcome(COMPILED, "simclr", torch_device.type, skipped="--no-compile"))
    say("  kornia ...")
    outcomes.append(kornia_contender(setup, config))
    say("  DALI ...")
    outcomes.append(dali_contender(setup, config))
    for name, bcl_recipe, _ in bcl_recipes:
        outcomes += bcl_contenders(setup, bcl_recipe, name, compile)
    say("  where the time goes ...")
    parts = breakdown(setup, config)

    baselines = {o.group: o.images_per_s for o in outcomes if o.name.startswith(REFERENCE) and not o.skipped}
    return {
        "benchmark": "views",
        "machine": machine_description(torch_device),
        "settings": {
            "batch": batch, "batches_per_pass": batches, "images_per_pass": batch * batches, "repeats": repeats,
            "device": str(torch_device), "workers": workers, "image_size": IMAGE_SIZE,
            "recipe": simclr_path, "views": as_record(config),
            "bcl_recipes": {name: path for name, _, path in bcl_recipes},
            "rate": "images per second, two views of each image; best pass after a warm-up pass",
        },
        "contenders": [o.record(baselines.get(o.group)) for o in outcomes],
        "goals": goals(outcomes, baselines),
        "breakdown": parts,
    }


def views_table(result: dict[str, Any]) -> str:
    """The contenders as a table, the goals under it, then the breakdown."""
    rows = []
    for entry in result["contenders"]:
        if entry["status"] == "skipped":
            rows.append([entry["group"], entry["name"], entry["where"], "skipped", "-", entry["reason"]])
            continue
        ratio = entry["ratio_to_reference"]
        note = f"compile {entry['compile_seconds']:.1f} s" if "compile_seconds" in entry else ""
        rows.append([entry["group"], entry["name"], entry["where"], rate(entry["images_per_s"]),
                     "-" if ratio is None else f"{ratio:.2f}x", note])
    settings = result["settings"]
    cpu = result["machine"]["cpu"]
    gpu = result["machine"]["gpu"]
    lines = [f"two views per image, {settings['image_size']}x{settings['image_size']} uint8, batch "
             f"{settings['batch']}; {cpu['name']}, {cpu['cores']} cores" + (f", {gpu}" if gpu else ""),
             table(["group", "contender", "where", "images/s", "x PIL", "note"], rows,
                   [False, False, False, True, True, False]),
             "", "goals (targets, not assertions):"]
    for goal in result["goals"]:
        state = {True: "met", False: "not met", None: "not measured"}[goal["met"]]
        value = "-" if goal["value"] is None else f"{goal['value']:.2f}x"
        lines.append(f"  {goal['goal']}: {value} ({state})")
    parts = result["breakdown"]["parts"]
    lines += ["", f"where the time goes: one fastlt view of {result['breakdown']['batch']} images "
                  f"on {result['breakdown']['where']}",
              table(["stage", "time", "images/s", "share of view", "in the recipe's view"],
                    [[name, f"{p['seconds'] * 1000:.2f} ms", rate(p["images_per_s"]), f"{p['share_of_view']:.0%}",
                      "yes" if p["in_recipe_view"] else "no"] for name, p in parts.items()],
                    [False, True, True, True, False])]
    return "\n".join(lines)
