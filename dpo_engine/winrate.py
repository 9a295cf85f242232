"""Win rate of one model over another from blind votes, with a 95% Wilson score interval.

Counting: a win is 1, a loss 0, and a tie (or "both bad": neither model was preferred)
is half a win, as AlpacaEval and Chatbot-Arena-style win rates count it, so

    p̂ = (wins + ties / 2) / n,   n = wins + losses + ties.

Skips are not votes and are left out by the caller. The Wilson score interval
(Wilson 1927; Brown, Cai & DasGupta 2001 recommend it over the normal "Wald" interval
for small n, where it never leaves [0, 1] and does not collapse to a point at 0 or n wins):

    center = (p̂ + z²/2n) / (1 + z²/n)
    half   = z·sqrt(p̂(1−p̂)/n + z²/4n²) / (1 + z²/n)

With ties as half-wins the votes are not Bernoulli: a tie has less variance than a
coin flip, so treating the n votes as n Bernoulli trials makes the interval slightly
wider than it need be (conservative), never narrower.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal: a two-sided 95% interval


def win_rate(wins: int, losses: int, ties: int = 0, z: float = Z95) -> tuple[float, float, float]:
    """(rate, low, high) of the first model over the second; ties count half.

    Raises:
        ValueError: a negative count, or no votes at all (there is no rate to give).

    Example: 8 wins, 2 losses -> p̂ = 0.8, n = 10, z² = 3.8415;
        center = (0.8 + 0.19207) / 1.38415 = 0.71674,
        half = 1.96·sqrt(0.016 + 0.0096037) / 1.38415 = 0.22658 -> (0.8, 0.49016, 0.94331).
    """
    if min(wins, losses, ties) < 0:
        raise ValueError(f"vote counts must be >= 0, got wins={wins} losses={losses} ties={ties}")
    n = wins + losses + ties
    if n == 0:
        raise ValueError("no votes yet: a win rate needs at least one")
    p = (wins + 0.5 * ties) / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return p, max(0.0, center - half), min(1.0, center + half)
