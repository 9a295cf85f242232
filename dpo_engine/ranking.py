"""A ranking of k answers to one prompt, as the preference pairs it implies.

The person orders k answers best first; neighbours may be marked tied. Every two answers
in different places give one pair (the better one chosen), every two tied answers give a
tie, so a ranking of k yields k(k-1)/2 comparisons of which at most k(k-1)/2 are pairs:

    ranked A > B = C > D   (ties = [False, False, True, False])
    levels     0   1   1   2
    pairs      A>B  A>C  A>D  B>D  C>D      ties  B=C        (5 pairs + 1 tie = 6 = 4·3/2)

Answers left unranked (the person stopped early) tie for last place, below every ranked
one: ranking only the best of 4 gives the 3 pairs "best > each other one" and 3 ties.

Pure functions of plain values; the store writes the result in one transaction
(`Project.record_ranking`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence, TypeVar

from dpo_engine.errors import ConfigError

T = TypeVar("T", bound=Hashable)
MIN_K, MAX_K = 2, 8  # fewer than 2 is no comparison; more than 8 is more than a person reads at once


@dataclass(frozen=True)
class RankedPair:
    """Two answers of one ranking: `better` placed above `worse`, or tied with it."""

    better: Hashable  # the answer placed higher (for a tie: the one listed first)
    worse: Hashable
    tied: bool  # True: same place, a tie comparison (not a DPO pair)


def rank_levels(ties: Sequence[bool]) -> list[int]:
    """The place (0 = best) of each answer in rank order; ties[i] joins answer i to i-1's place.

    Example: ties [False, True, False] -> levels [0, 0, 1].
    """
    if ties and ties[0]:
        raise ConfigError("The best answer cannot be tied with a previous one: there is none.")
    levels, level = [], -1
    for tied in ties:
        level += 0 if tied else 1
        levels.append(level)
    return levels


def complete_ranking(ranked: Sequence[T], shown: Sequence[T], ties: Sequence[bool] | None = None
                     ) -> tuple[list[T], list[bool]]:
    """Append the answers of `shown` that were not ranked, tied together in last place.

    Returns:
        (all answers best first, tie flags), ready for `ranking_pairs`.
    """
    ties = list(ties) if ties is not None else [False] * len(ranked)
    if len(ties) != len(ranked):
        raise ConfigError(f"{len(ranked)} ranked answers but {len(ties)} tie flags: give one flag per answer.")
    rest = [s for s in shown if s not in set(ranked)]
    if any(r not in set(shown) for r in ranked):
        raise ConfigError("A ranked answer is not among the shown answers.")
    order = list(ranked) + rest
    flags = ties + [i > 0 for i in range(len(rest))]  # the rest: one shared last place
    if not ranked and flags:
        flags[0] = False
    return order, flags


def ranking_pairs(ranked: Sequence[T], ties: Sequence[bool] | None = None) -> list[RankedPair]:
    """Every two answers of a ranking, best first, as pairs and ties: k(k-1)/2 in all.

    Args:
        ranked: distinct answers (ids, texts…) from best to worst.
        ties: one flag per answer; ties[i] True places answer i level with answer i-1.
            None: a strict order.

    Returns:
        RankedPair for each i < j in rank order: (ranked[i], ranked[j], tied).
    """
    k = len(ranked)
    if not MIN_K <= k <= MAX_K:
        raise ConfigError(f"A ranking needs {MIN_K} to {MAX_K} answers; got {k}.")
    if len(set(ranked)) != k:
        raise ConfigError("An answer appears twice in the ranking: each answer gets one place.")
    ties = list(ties) if ties is not None else [False] * k
    if len(ties) != k:
        raise ConfigError(f"{k} answers but {len(ties)} tie flags: give one flag per answer.")
    levels = rank_levels(ties)
    return [RankedPair(ranked[i], ranked[j], levels[i] == levels[j])
            for i in range(k) for j in range(i + 1, k)]


def count_pairs(levels: Sequence[int]) -> int:
    """DPO pairs a ranking with these places yields: pairs of answers at different places.

    Example: levels [0, 1, 1, 2] -> 6 - 1 tied = 5.
    """
    k = len(levels)
    return sum(levels[i] != levels[j] for i in range(k) for j in range(i + 1, k))
