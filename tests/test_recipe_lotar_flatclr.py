"""The shipped lotar and flatclr recipes hold what their reference code runs (values written out from the code)."""
import pytest

from fastlt.methods import build_method
from fastlt.recipe import find_recipe, load_recipe


@pytest.mark.parametrize("data_set, classes", [("cifar10", 10), ("cifar100", 100)])
def test_lotar_recipes_train_as_andrew15818_simclr(data_set, classes):
    r = load_recipe(find_recipe(f"{data_set}_lt/lotar"))
    # run.sh: batch 256, 1200 epochs, tau 0.2, lars, lr 0.5, encoder_dim 10 (CIFAR-10; CIFAR-100: its classes)
    assert (r.train.batch_size, r.train.epochs, r.method.temperature, r.train.drop_last) == (256, 1200, 0.2, False)
    assert (r.model.head, r.model.fc_dim, r.model.projector_hidden, r.model.projector_out) == ("lotar", classes, 128, 128)
    # train.py:81 (the sign), 95-96 (one forward per view), 111-112 and 162 (schedule stepped after the optimiser)
    assert (r.method.name, r.method.lotar_sign, r.method.view_forward) == ("lotar", -1.0, "separate")
    o = r.optim
    # data/lars.py: momentum 0.9, weight decay 5e-4, eta 1e-3, every parameter, |g| + wd |w|
    assert (o.name, o.lars_denominator, o.lr, o.momentum, o.weight_decay, o.lars_trust, o.exclude_bn_bias) == (
        "lars", "norm-sum", 0.5, 0.9, 5e-4, 1e-3, False)
    assert (o.warmup_epochs, o.final_lr, o.lr_step_offset) == (10, 1e-6, 0)
    # data/data.py:10-24: RandomResizedCrop(32) defaults, ColorJitter s = 0.5, p 0.8, grayscale 0.2, no blur
    v = r.views
    assert (v.scale, v.ratio, v.interpolation) == ((0.08, 1.0), (3 / 4, 4 / 3), "bilinear")
    assert (v.jitter, v.jitter_p, v.grayscale_p, v.blur_p, v.flip_p) == ((0.4, 0.4, 0.4, 0.1), 0.8, 0.2, 0.0, 0.5)


@pytest.mark.parametrize("data_set", ["cifar10", "cifar100"])
def test_flatclr_recipes_train_as_junya_chen_flatclr(data_set):
    r = load_recipe(find_recipe(f"{data_set}_lt/flatclr"))
    # main.py:25-40: batch 512, 100 epochs, lr 0.6, lars, wd 1e-6, warm-up 10, 2-layer nonlinear head, out 128, tau 0.1
    assert (r.train.batch_size, r.train.epochs, r.train.drop_last, r.method.temperature) == (512, 100, True, 0.1)
    assert (r.model.head, r.model.projector_hidden, r.model.projector_layers, r.model.projector_out) == (
        "mlp", 512, 2, 128)
    o = r.optim
    # optimizer/lars.py: g + wd w in the trust ratio, nothing excluded; flatclr.py:138-139 steps the schedule after
    assert (o.name, o.lars_denominator, o.lr, o.momentum, o.weight_decay, o.lars_trust, o.exclude_bn_bias) == (
        "lars", "decayed-grad", 0.6, 0.9, 1e-6, 1e-3, False)
    assert (o.warmup_epochs, o.final_lr, o.lr_step_offset) == (10, 1e-6, 0)
    v = r.views  # data_aug/contrastive_learning_dataset.py:39: size 32, s = 0.5, no blur
    assert (v.scale, v.interpolation, v.jitter, v.blur_p) == ((0.08, 1.0), "bilinear", (0.4, 0.4, 0.4, 0.1), 0.0)


def test_imagenet100_flatclr_takes_its_imagenet_views():
    v = load_recipe(find_recipe("imagenet100_lt/flatclr")).views  # contrastive_learning_dataset.py:49-52: s = 1, blur
    assert (v.size, v.jitter, v.blur_p, v.blur_kernel_size) == (224, (0.8, 0.8, 0.8, 0.2), 0.5, 23)


@pytest.mark.parametrize("data_set", ["cifar10_lt", "cifar100_lt", "imagenet100_lt", "digits_lt"])
@pytest.mark.parametrize("method", ["lotar", "flatclr"])
def test_every_shipped_recipe_builds_its_method(data_set, method):
    recipe = load_recipe(find_recipe(f"{data_set}/{method}"))
    assert recipe.optim.name == "lars" and recipe.optim.lr_step_offset == 0
    built = build_method(recipe, num_samples=4)
    assert built.separate_views == (method == "lotar")


@pytest.mark.parametrize("method", ["lotar", "flatclr"])
def test_the_digits_recipes_train_and_resume_exactly(digits_store, tmp_path, method):
    """The shipped digits recipe, shrunk: LARS, the schedule stepped after the optimiser, the method's head (and
    LoTaR's separate view forwards) through the trainer, stopped after epoch 1 and resumed bit for bit."""
    import torch

    from fastlt.checkpoint import load_checkpoint
    from fastlt.train.run_folder import CHECKPOINT_NAME
    from fastlt.train.trainer import pretrain, resume_run

    def shrunk(name):
        return load_recipe(find_recipe(f"digits_lt/{method}"), [
            f"data.store={digits_store}", "model.width=4", "train.epochs=2", "train.monitor_every=0",
            "train.progress=false", "train.precision=fp32", "train.device=cpu", f"train.out_dir={tmp_path}",
            f"train.name={name}"])

    whole = pretrain(shrunk("whole"))
    halves = pretrain(shrunk("halves"), until_epoch=1)
    resume_run(halves)
    a, b = (load_checkpoint(run / CHECKPOINT_NAME)["model"] for run in (whole, halves))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert all(torch.isfinite(value).all() for value in a.values() if value.is_floating_point())
