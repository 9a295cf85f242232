"""The ranking a person is building on the Label page, before it is saved: plain state, no Qt."""

from __future__ import annotations

from dpo_engine.ranking import complete_ranking


class RankingDraft:
    """Places given so far to k answers (indices in shown order), best first.

    `ties[i]` puts `order[i]` level with `order[i - 1]`; `tie_next` is the pending "tie
    with previous" toggle that the next placed answer takes.
    """

    def __init__(self) -> None:
        self.order: list[int] = []
        self.ties: list[bool] = []
        self.tie_next = False

    def clear(self) -> None:
        self.order, self.ties, self.tie_next = [], [], False

    def place(self, index: int, n: int, tied: bool | None = None) -> bool:
        """Answer `index` takes the next place (or the previous one's when tied; default:
        the pending toggle). False for an index out of range or already placed."""
        if not 0 <= index < n or index in self.order:
            return False
        tied = self.tie_next if tied is None else tied
        self.order.append(index)
        self.ties.append(bool(tied and len(self.order) > 1))
        self.tie_next = False
        return True

    def toggle_tie(self) -> bool:
        """Flip the pending tie (only once something is placed); True if it changed."""
        if self.order:
            self.tie_next = not self.tie_next
        return bool(self.order)

    def unplace(self) -> None:
        """Take back the pending tie, else the last place given."""
        if self.tie_next:
            self.tie_next = False
        elif self.order:
            self.order.pop()
            self.ties.pop()

    def set_order(self, order: list[int], n: int) -> bool:
        """A whole new order of all n answers (a drag), no ties; False if it is not one."""
        if sorted(order) != list(range(n)):
            return False
        self.order, self.ties, self.tie_next = list(order), [False] * n, False
        return True

    def complete(self, n: int) -> tuple[list[int], list[bool]]:
        """The order to store: unplaced answers tie for last."""
        return complete_ranking(self.order, list(range(n)), self.ties)
