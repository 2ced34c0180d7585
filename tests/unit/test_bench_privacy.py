"""The canary exposure estimator of bench/privacy.py (Carlini et al. 2019), on cases whose
answer is known, and the storage scan's piece matching."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from privacy import exposure, readable_fraction, with_canary  # noqa: E402


def test_a_fully_enumerated_space_gives_the_exact_rank():
    space = 100
    others = np.linspace(-50.0, -10.0, space - 1)          # every other member scored
    bits, rank = exposure(0.0, others, space)                # the canary is the most likely
    assert (bits, rank) == (math.log2(space), 1.0)
    bits, rank = exposure(-100.0, others, space)             # the least likely
    assert rank == space and bits == 0.0
    bits, rank = exposure(-30.0 + 1e-9, others, space)       # ahead of half of them
    assert rank == 1 + int((others > -30.0 + 1e-9).sum()) and bits == pytest.approx(math.log2(space / rank))


def test_sampled_candidates_estimate_the_rank_in_the_space():
    rng = np.random.default_rng(0)
    samples = rng.standard_normal(2000)
    # the median canary: half the space is preferred, one bit
    bits, _ = exposure(0.0, samples, 10**9)
    assert bits == pytest.approx(1.0, abs=0.1)
    # a quarter preferred (empirical fraction): two bits
    bits, _ = exposure(float(np.quantile(samples, 0.75)), samples, 10**9)
    assert bits == pytest.approx(2.0, abs=0.05)


def test_a_canary_beyond_every_sample_is_extrapolated_and_capped():
    samples = np.random.default_rng(1).standard_normal(2000)
    # 3.5 sigma above, beyond all but ~0.5 of the samples: the normal tail is 2.33e-4 of the
    # space (12.1 bits), not "first of 2000" (11 bits) nor the whole space (29.9)
    bits, rank = exposure(3.5, samples, 10**9)
    assert bits == pytest.approx(-math.log2(2.326e-4), abs=1.0)
    # far beyond anything: ranked first in the space, never more than log2(space) bits
    bits, rank = exposure(1e6, samples, 10**9)
    assert rank == pytest.approx(1.0) and bits == pytest.approx(math.log2(10**9))


def test_exposure_needs_candidates():
    with pytest.raises(ValueError):
        exposure(0.0, [], 10**9)


def test_the_scan_finds_pieces_raw_or_hex_and_nothing_else():
    text = bytes(range(104))                                    # 6 whole pieces, no two alike
    assert readable_fraction(text, b"") == 0.0
    assert readable_fraction(text, b"x" + text + b"y") == 1.0
    assert readable_fraction(text, text[:48].hex().encode()) == pytest.approx(3 / 6)


def test_the_canary_goes_in_whole_lines_and_the_text_stays():
    text = b"".join(b"line %d\n" % i for i in range(100))
    out = with_canary(text, "012345678", 5)
    assert out.count(b"\nmy PIN is 012345678\n") == 5
    assert out.replace(b"my PIN is 012345678\n", b"") == text
