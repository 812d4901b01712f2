"""Warm-up + cosine learning rate against its definition at the landmarks and in between."""
import math

from fastlt.train.schedule import warmup_cosine_lr


def test_warmup_is_linear_and_reaches_base():
    lrs = [warmup_cosine_lr(s, 100, 10, 0.5, 1e-6) for s in range(10)]
    assert math.isclose(lrs[0], 0.05) and math.isclose(lrs[9], 0.5)
    assert all(math.isclose(b - a, 0.05) for a, b in zip(lrs, lrs[1:]))


def test_cosine_from_base_to_final():
    total, warmup, base, final = 100, 10, 0.5, 1e-6
    assert math.isclose(warmup_cosine_lr(warmup, total, warmup, base, final), base)
    assert math.isclose(warmup_cosine_lr(total - 1, total, warmup, base, final), final)
    middle = warmup + (total - 1 - warmup) / 2
    assert math.isclose(warmup_cosine_lr(int(middle), total, warmup, base, final),
                        final + 0.5 * (base - final) * (1 + math.cos(math.pi * int(middle - warmup) / (total - 1 - warmup))))
    decay = [warmup_cosine_lr(s, total, warmup, base, final) for s in range(warmup, total)]
    assert all(b <= a for a, b in zip(decay, decay[1:]))


def test_no_warmup():
    assert math.isclose(warmup_cosine_lr(0, 10, 0, 1.0, 0.0), 1.0)
