"""The learning-rate schedule is a pure function: warmup to the peak, cosine down to the floor."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from microturn.train.schedule import lr_at


def test_warmup_rises_linearly_to_the_peak():
    lrs = [lr_at(s, lr=1.0, warmup_steps=4, max_steps=100) for s in range(4)]
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_cosine_reaches_the_floor_at_the_last_step_and_stays():
    kw = dict(lr=2.0, warmup_steps=10, max_steps=111, min_lr_ratio=0.1)
    assert lr_at(10, **kw) == pytest.approx(2.0)
    assert lr_at(60, **kw) == pytest.approx(0.2 + 0.5 * 1.8)  # halfway: mean of peak and floor
    assert lr_at(110, **kw) == pytest.approx(0.2)
    assert lr_at(500, **kw) == pytest.approx(0.2)


@given(
    warmup=st.integers(0, 50),
    extra=st.integers(2, 500),
    ratio=st.floats(0, 1),
)
def test_after_warmup_the_rate_never_rises_and_stays_within_bounds(warmup, extra, ratio):
    max_steps = warmup + extra
    lrs = [lr_at(s, lr=1e-3, warmup_steps=warmup, max_steps=max_steps, min_lr_ratio=ratio) for s in range(max_steps)]
    after = lrs[warmup:]
    assert all(b <= a + 1e-15 for a, b in zip(after, after[1:]))
    assert all(1e-3 * ratio - 1e-15 <= x <= 1e-3 + 1e-15 for x in after)
    assert all(0 <= x <= 1e-3 + 1e-15 for x in lrs)
    assert not any(math.isnan(x) for x in lrs)


def test_negative_step_is_an_error():
    with pytest.raises(ValueError):
        lr_at(-1, lr=1.0, warmup_steps=0, max_steps=10)
