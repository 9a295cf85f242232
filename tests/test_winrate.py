import math

import pytest

from dpo_engine.winrate import win_rate


def test_eight_of_ten_matches_the_hand_computed_wilson_interval():
    """p̂ = 0.8, n = 10, z = 1.96: z² = 3.84146, 1 + z²/n = 1.384146,
    center = (0.8 + 0.192073) / 1.384146 = 0.716740,
    half = 1.959964·sqrt(0.016 + 0.0096037) / 1.384146 = 1.959964·0.160011 / 1.384146 = 0.226578."""
    rate, low, high = win_rate(8, 2, 0)
    assert rate == 0.8
    assert low == pytest.approx(0.716740 - 0.226578, abs=2e-6)
    assert high == pytest.approx(0.716740 + 0.226578, abs=2e-6)


def test_ties_count_half():
    """3 wins, 1 loss, 2 ties: p̂ = (3 + 1) / 6 = 2/3, the same interval as 4 wins of 6."""
    assert win_rate(3, 1, 2) == win_rate(4, 2, 0)
    assert win_rate(3, 1, 2)[0] == pytest.approx(2 / 3)


def test_all_wins_keeps_a_lower_bound_below_one():
    """5 of 5: Wilson's low end is n / (n + z²) = 5 / 8.841459 = 0.565518; the high end is 1."""
    rate, low, high = win_rate(5, 0, 0)
    assert rate == 1.0
    assert low == pytest.approx(5 / (5 + 1.959964**2), abs=1e-6)
    assert high == pytest.approx(1.0)


def test_symmetric_under_swapping_the_models():
    rate, low, high = win_rate(7, 3, 1)
    r2, l2, h2 = win_rate(3, 7, 1)
    assert rate == pytest.approx(1 - r2) and low == pytest.approx(1 - h2) and high == pytest.approx(1 - l2)


def test_interval_narrows_with_more_votes():
    _, low10, high10 = win_rate(6, 4)
    _, low100, high100 = win_rate(60, 40)
    assert high100 - low100 < high10 - low10
    assert low100 > low10 and high100 < high10


@pytest.mark.parametrize("counts", [(0, 0, 0), (-1, 2, 0)])
def test_no_votes_or_negative_counts_raise(counts):
    with pytest.raises(ValueError):
        win_rate(*counts)


def test_one_tie_alone_is_even_with_a_wide_interval():
    rate, low, high = win_rate(0, 0, 1)
    assert rate == 0.5 and low < 0.2 and high > 0.8 and not math.isnan(low)
