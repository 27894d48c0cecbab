"""RFM quintile scores and the R x F segment grid."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.rfm import (
    SEGMENT_NAMES,
    RfmBase,
    RfmScores,
    quintile,
    quintiles,
    scores,
    segment_name,
)

BASE = np.arange(1.0, 101.0)  # 1..100: quintiles are exactly 1-20, 21-40, ..., 81-100


def test_quintile_boundaries() -> None:
    expected = {1: 1, 20: 1, 21: 2, 40: 2, 41: 3, 60: 3, 61: 4, 80: 4, 81: 5, 100: 5}
    for value, score in expected.items():
        assert quintile(value, BASE) == score, value
    # Values between or beyond the base's own.
    assert quintile(20.5, BASE) == 2  # 20 below, none equal: rank exactly 0.2 goes up
    assert quintile(19.5, BASE) == 1
    assert quintile(-1e9, BASE) == 1
    assert quintile(1e9, BASE) == 5


def test_lower_is_better_mirrors_the_scale() -> None:
    """Recency is days since the last purchase: the fewest days score 5."""
    expected = {1: 5, 20: 5, 21: 4, 40: 4, 41: 3, 60: 3, 61: 2, 80: 2, 81: 1, 100: 1}
    for value, score in expected.items():
        assert quintile(value, BASE, higher_is_better=False) == score, value
    for value in BASE.tolist():  # a base value's mid-rank is never on a quintile boundary
        assert quintile(value, BASE, higher_is_better=False) == 6 - quintile(value, BASE)


def test_ties_score_alike_at_their_middle_rank() -> None:
    # 60% of customers bought once: their mid-rank is 0.3, the second quintile, for all.
    frequency = np.sort(np.r_[np.ones(60), np.arange(2.0, 42.0)])
    assert quintile(1, frequency) == 2
    table = scores(np.zeros(100), frequency, frequency)
    assert set(table.frequency[:60].tolist()) == {2}
    # Everyone equal: everyone in the middle, in either direction.
    same = np.full(10, 7.0)
    assert quintile(7.0, same) == 3
    assert quintile(7.0, same, higher_is_better=False) == 3


def test_the_base_must_be_usable() -> None:
    with pytest.raises(ValueError, match="empty"):
        quintile(1.0, [])
    with pytest.raises(ValueError, match="sorted"):
        quintile(1.0, [3.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        quintile(float("nan"), BASE)
    with pytest.raises(ValueError, match="finite"):
        scores([1.0, float("inf")], [1.0, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="equal lengths"):
        scores([1.0, 2.0], [1.0], [1.0, 2.0])


def test_grid_names_every_pair_once_and_uses_every_name() -> None:
    names = {(r, f): segment_name(r, f) for r, f in itertools.product(range(1, 6), repeat=2)}
    assert len(names) == 25
    assert set(names.values()) == set(SEGMENT_NAMES)
    assert len(SEGMENT_NAMES) == 11
    assert names[5, 5] == "Champions"
    assert names[5, 1] == "New Customers"
    assert names[1, 5] == "Can't Lose Them"
    assert names[1, 1] == "Lost"
    assert names[3, 3] == "Need Attention"
    for bad in [(0, 3), (3, 6), (6, 1)]:
        with pytest.raises(ValueError, match=r"1\.\.5"):
            segment_name(*bad)


def test_rfm_scores_are_validated_and_named() -> None:
    assert RfmScores(5, 4, 1).segment == "Champions"
    with pytest.raises(ValueError, match="monetary"):
        RfmScores(1, 1, 6)


def test_organization_table_agrees_with_single_customer_scoring() -> None:
    rng = np.random.default_rng(1)
    recency = rng.integers(0, 400, 500).astype(float)
    frequency = rng.poisson(2.0, 500).astype(float) + 1
    monetary = np.round(rng.lognormal(4.0, 1.0, 500), 2)
    table = scores(recency, frequency, monetary)
    base = RfmBase.of(recency, frequency, monetary)
    assert len(table) == 500
    segments = table.segments()
    for i in range(500):
        one = base.score(recency[i], frequency[i], monetary[i])
        assert table[i] == one
        assert segments[i] == one.segment
    # Roughly a fifth per score where values are nearly distinct.
    counts = np.bincount(table.monetary, minlength=6)[1:]
    assert np.all(np.abs(counts - 100) <= 2)


def test_an_empty_organization_has_an_empty_table() -> None:
    table = scores([], [], [])
    assert len(table) == 0
    assert table.segments() == []


finite = st.floats(-1e12, 1e12, allow_nan=False)


@given(base=st.lists(finite, min_size=1, max_size=60), a=finite, b=finite)
def test_scores_are_monotone_in_the_value(base: list[float], a: float, b: float) -> None:
    low, high = sorted((a, b))
    sorted_base = np.sort(base)
    assert 1 <= quintile(low, sorted_base) <= quintile(high, sorted_base) <= 5
    assert quintile(low, sorted_base, False) >= quintile(high, sorted_base, False)
    if low == high:
        assert quintile(low, sorted_base) == quintile(high, sorted_base)


@given(values=st.lists(finite, min_size=1, max_size=60))
def test_vectorised_and_scalar_scoring_agree(values: list[float]) -> None:
    array = np.array(values)
    ordered = np.sort(array)
    many = quintiles(array, ordered)
    assert many.tolist() == [quintile(v, ordered) for v in values]
    # Equal values, equal scores.
    for i, j in itertools.combinations(range(len(values)), 2):
        if values[i] == values[j]:
            assert many[i] == many[j]
