"""The grid is exact: chunk boundaries agree in samples, codec frames and seconds, with no drift."""

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from microturn.clock import GRID, Grid, rescale, round_fraction, to_fraction


def test_default_grid_is_encodec_24k_with_200ms_chunks():
    assert (GRID.sample_rate, GRID.hop, GRID.frames_per_chunk) == (24000, 320, 15)
    assert GRID.chunk_samples == 4800
    assert GRID.frame_rate == 75
    assert GRID.chunk_seconds == Fraction(1, 5)


grids = st.builds(
    Grid,
    sample_rate=st.sampled_from([8000, 16000, 22050, 24000, 32000, 44100, 48000]),
    hop=st.integers(1, 2048),
    frames_per_chunk=st.integers(1, 64),
)


@settings(max_examples=300, deadline=None)
@given(grid=grids, chunk=st.integers(0, 10_000_000))
def test_chunk_boundaries_agree_in_every_unit(grid: Grid, chunk: int):
    sample = grid.chunk_to_sample(chunk)
    frame = grid.chunk_to_frame(chunk)
    assert grid.frame_to_sample(frame) == sample
    assert grid.sample_to_frame(sample) == frame
    assert grid.sample_to_chunk(sample) == chunk
    assert grid.frame_to_chunk(frame) == chunk
    seconds = grid.samples_to_seconds(sample)
    assert seconds == chunk * grid.chunk_seconds  # exact: no drift after millions of chunks
    assert grid.seconds_to_samples(seconds, "floor") == sample
    assert grid.frames_to_seconds(frame) == seconds


@settings(max_examples=300, deadline=None)
@given(grid=grids, num_samples=st.integers(0, 500_000_000))
def test_padding_covers_every_sample_with_less_than_one_chunk(grid: Grid, num_samples: int):
    padded = grid.padded_samples(num_samples)
    assert padded % grid.chunk_samples == 0
    assert 0 <= padded - num_samples < grid.chunk_samples
    valid = grid.valid_frames(num_samples)
    assert grid.frame_to_sample(valid) >= num_samples > grid.frame_to_sample(valid - 1) or num_samples == 0
    assert valid <= grid.num_chunks(num_samples) * grid.frames_per_chunk


@settings(max_examples=300, deadline=None)
@given(
    ms=st.integers(0, 10**9),
    from_rate=st.sampled_from([8000, 16000, 22050, 44100, 48000]),
)
def test_seconds_from_decimal_text_round_exactly(ms: int, from_rate: int):
    seconds = f"{ms // 1000}.{ms % 1000:03d}"
    assert GRID.seconds_to_samples(seconds, "floor") == ms * 24
    assert GRID.seconds_to_samples(float(seconds), "floor") == ms * 24  # 0.3 s is 7200, not 7199
    pos = rescale(ms * from_rate, 1000 * from_rate, 24000, "floor")
    assert pos == ms * 24


def test_rounding_modes():
    assert round_fraction(Fraction(5, 2), "nearest") == 3
    assert round_fraction(Fraction(-5, 2), "nearest") == -3
    assert round_fraction(Fraction(7, 3), "floor") == 2
    assert round_fraction(Fraction(7, 3), "ceil") == 3
    assert round_fraction(Fraction(-7, 3), "floor") == -3
    with pytest.raises(ValueError):
        round_fraction(Fraction(1), "up")  # type: ignore[arg-type]


def test_times_must_be_finite_numbers():
    with pytest.raises(ValueError):
        to_fraction(float("nan"))
    with pytest.raises(TypeError):
        to_fraction(True)
    assert to_fraction(0.1) == Fraction(1, 10)
    np = pytest.importorskip("numpy")
    assert to_fraction(np.float64(0.3)) == Fraction(3, 10)
    assert to_fraction(np.int64(7)) == 7
