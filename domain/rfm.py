"""RFM scores (recency, frequency, monetary; 1..5 each) and the segment names of the R x F grid.

Scores are quintiles of the organization's own customers: a value's percentile rank in the
base is its *mid-rank*, (#values below + #values at most it) / (2 n), and the score is
1 + floor(5 * rank), capped at 5. Mid-ranks make ties fair and symmetric: equal values always
get equal scores, a block of ties lands in the quintile of its middle, and a base where every
value is equal scores 3. Recency is "days since the last purchase", so fewer days is better:
its rank is taken from the other end (1 - rank). The arithmetic is in integers, so a value
exactly on a quintile boundary is never moved by rounding. A value outside the base's range
scores 1 or 5.

Segment grid (rows: recency score, columns: frequency score; every cell has one name)::

  r\\f | 1               2                    3                    4                5
  ----+--------------------------------------------------------------------------------------
   5  | New Customers   Potential Loyalists  Potential Loyalists  Champions        Champions
   4  | Promising       Potential Loyalists  Potential Loyalists  Loyal Customers  Loyal Customers
   3  | About To Sleep  About To Sleep       Need Attention       Loyal Customers  Loyal Customers
   2  | Hibernating     Hibernating          At Risk              At Risk          Can't Lose Them
   1  | Lost            Hibernating          At Risk              At Risk          Can't Lose Them

This is the widely used R x F grid (recent + frequent = Champions, frequent but long gone =
Can't Lose Them, ...) with its bottom-left cell (least recent, least frequent) named Lost.
The monetary score does not enter the segment; it ranks value within one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]

SCORES = range(1, 6)

CHAMPIONS = "Champions"
LOYAL_CUSTOMERS = "Loyal Customers"
POTENTIAL_LOYALISTS = "Potential Loyalists"
NEW_CUSTOMERS = "New Customers"
PROMISING = "Promising"
NEED_ATTENTION = "Need Attention"
ABOUT_TO_SLEEP = "About To Sleep"
AT_RISK = "At Risk"
CANT_LOSE_THEM = "Can't Lose Them"
HIBERNATING = "Hibernating"
LOST = "Lost"

SEGMENT_NAMES = (
    CHAMPIONS,
    LOYAL_CUSTOMERS,
    POTENTIAL_LOYALISTS,
    NEW_CUSTOMERS,
    PROMISING,
    NEED_ATTENTION,
    ABOUT_TO_SLEEP,
    AT_RISK,
    CANT_LOSE_THEM,
    HIBERNATING,
    LOST,
)

# _GRID[r - 1][f - 1]; kept in the same layout as the docstring table, bottom row first.
_GRID: tuple[tuple[str, ...], ...] = (
    (LOST, HIBERNATING, AT_RISK, AT_RISK, CANT_LOSE_THEM),
    (HIBERNATING, HIBERNATING, AT_RISK, AT_RISK, CANT_LOSE_THEM),
    (ABOUT_TO_SLEEP, ABOUT_TO_SLEEP, NEED_ATTENTION, LOYAL_CUSTOMERS, LOYAL_CUSTOMERS),
    (PROMISING, POTENTIAL_LOYALISTS, POTENTIAL_LOYALISTS, LOYAL_CUSTOMERS, LOYAL_CUSTOMERS),
    (NEW_CUSTOMERS, POTENTIAL_LOYALISTS, POTENTIAL_LOYALISTS, CHAMPIONS, CHAMPIONS),
)


def _finite(values: ArrayLike, name: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    return array


def _sorted_base(values: ArrayLike, name: str) -> FloatArray:
    base = np.sort(_finite(values, name).ravel())
    if base.size == 0:
        raise ValueError(f"{name}: cannot score against an empty base")
    return base


def quintiles(values: ArrayLike, sorted_base: ArrayLike, higher_is_better: bool = True) -> IntArray:
    """Scores 1..5 of many values against one sorted base (see the module docstring)."""
    base = _finite(sorted_base, "sorted_base").ravel()
    if base.size == 0:
        raise ValueError("cannot score against an empty base")
    if np.any(base[1:] < base[:-1]):
        raise ValueError("sorted_base must be sorted ascending")
    array = _finite(values, "values")
    below = np.searchsorted(base, array, side="left").astype(np.int64)
    at_most = np.searchsorted(base, array, side="right").astype(np.int64)
    twice_rank = below + at_most  # 2 n * mid-rank, an integer in 0..2n
    if not higher_is_better:
        twice_rank = 2 * base.size - twice_rank
    scores: IntArray = np.minimum(5 * twice_rank // (2 * base.size), 4) + 1
    return scores


def quintile(value: float, sorted_base: ArrayLike, higher_is_better: bool = True) -> int:
    """Score 1..5 of one value against the organization's sorted base values."""
    return int(quintiles(np.float64(value), sorted_base, higher_is_better))


def segment_name(r: int, f: int) -> str:
    """Segment of a recency score r and frequency score f (the grid in the module docstring)."""
    if r not in SCORES or f not in SCORES:
        raise ValueError(f"scores must be 1..5, got r={r}, f={f}")
    return _GRID[r - 1][f - 1]


@dataclass(frozen=True)
class RfmScores:
    """One customer's scores, each 1..5 with 5 best (most recent, most frequent, most spent)."""

    recency: int
    frequency: int
    monetary: int

    def __post_init__(self) -> None:
        for name in ("recency", "frequency", "monetary"):
            if getattr(self, name) not in SCORES:
                raise ValueError(f"{name} score must be 1..5, got {getattr(self, name)}")

    @property
    def segment(self) -> str:
        return segment_name(self.recency, self.frequency)


@dataclass(frozen=True, eq=False)  # arrays: no element-wise __eq__
class RfmBase:
    """An organization's sorted recency (days), frequency and monetary values: sort once,
    then score single customers against it."""

    recency_days: FloatArray
    frequency: FloatArray
    monetary: FloatArray

    @classmethod
    def of(cls, recency_days: ArrayLike, frequency: ArrayLike, monetary: ArrayLike) -> RfmBase:
        return cls(
            _sorted_base(recency_days, "recency_days"),
            _sorted_base(frequency, "frequency"),
            _sorted_base(monetary, "monetary"),
        )

    def score(self, recency_days: float, frequency: float, monetary: float) -> RfmScores:
        return RfmScores(
            quintile(recency_days, self.recency_days, higher_is_better=False),
            quintile(frequency, self.frequency),
            quintile(monetary, self.monetary),
        )


@dataclass(frozen=True, eq=False)  # arrays: no element-wise __eq__
class RfmTable:
    """Scores of a whole organization, element i being customer i of the input arrays."""

    recency: IntArray
    frequency: IntArray
    monetary: IntArray

    def __len__(self) -> int:
        return int(self.recency.size)

    def __getitem__(self, i: int) -> RfmScores:
        return RfmScores(int(self.recency[i]), int(self.frequency[i]), int(self.monetary[i]))

    def segments(self) -> list[str]:
        names = np.array([name for row in _GRID for name in row], dtype=object)
        return [str(s) for s in names[(self.recency - 1) * 5 + (self.frequency - 1)]]


def scores(recency_days: ArrayLike, frequency: ArrayLike, monetary: ArrayLike) -> RfmTable:
    """Score every customer of an organization against the organization itself, at once."""
    r, f, m = (
        _finite(v, name).ravel()
        for v, name in (
            (recency_days, "recency_days"),
            (frequency, "frequency"),
            (monetary, "monetary"),
        )
    )
    if not r.size == f.size == m.size:
        raise ValueError("recency_days, frequency and monetary must have equal lengths")
    if r.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return RfmTable(empty, empty, empty)
    return RfmTable(
        quintiles(r, np.sort(r), higher_is_better=False),
        quintiles(f, np.sort(f)),
        quintiles(m, np.sort(m)),
    )
