"""Ranking mode of the Label page: the places a person gives to one prompt's k answers (by
key, click or drag, ties allowed) and saving them as one group. The Label controller holds
one `LabelRanking` (`controller.ranking`) and tells it which prompt is on screen. The places
in progress are a `RankingDraft`, plain state without Qt (unit-tested alone); what the page
shows of them is a frozen `RankingState`."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QObject, Signal

from app.controllers.label_queue import PendingPair
from app.controllers.rounds import RoundHost
from dpo_engine.ranking import complete_ranking, rank_levels


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


@dataclass(frozen=True)
class RankingState:
    """The places given so far, as the page shows them."""

    n: int  # answers to rank (0: the prompt on screen is not a ranking)
    order: tuple[int, ...]  # answer indices placed, best first
    ties: tuple[bool, ...]  # ties[i]: order[i] shares the place of order[i - 1]
    tie_next: bool  # the next answer placed ties with the last one

    def place_of(self, index: int) -> tuple[int, bool] | None:
        """(place, 0 = best; shared with another answer) of answer `index`, None if unplaced."""
        places = dict(zip(self.order, rank_levels(list(self.ties)))) if self.order else {}
        if index not in places:
            return None
        return places[index], list(places.values()).count(places[index]) > 1

    def summary(self) -> str:
        """'3 = 1 > 4 = …': the ranking so far, answer numbers from 1; empty before any place."""
        text = "".join(("" if i == 0 else (" = " if tied else " > ")) + str(index + 1)
                       for i, (index, tied) in enumerate(zip(self.order, self.ties)))
        return text + (" = …" if self.order and self.tie_next else "")


class LabelRanking(QObject):
    """The ranking of the prompt on screen.

    Signals:
        changed(RankingState): places were given or taken back.
        message(str): a notice for the person.
        saved(int, PendingPair): a ranking was committed to the project (its group id).
    """

    changed = Signal(object)
    message = Signal(str)
    saved = Signal(int, object)

    def __init__(self, ctx: RoundHost):
        super().__init__()
        self.ctx = ctx
        self.draft = RankingDraft()
        self.pair: PendingPair | None = None  # the prompt on screen, when it is a ranking

    # the places, read by the page's tests and the controller
    order = property(lambda self: list(self.draft.order))
    ties = property(lambda self: list(self.draft.ties))
    tie_next = property(lambda self: self.draft.tie_next)

    def state(self) -> RankingState:
        n = self.pair.n if self.pair is not None else 0
        return RankingState(n, tuple(self.draft.order), tuple(self.draft.ties), self.draft.tie_next)

    def show(self, pair: PendingPair | None) -> None:
        """A new prompt is on screen: no places yet (a pair of two is no ranking)."""
        self.pair = pair if pair is not None and pair.ranking else None
        self.draft.clear()
        self._changed()

    def _changed(self) -> None:
        self.changed.emit(self.state())

    def _ready(self) -> PendingPair | None:
        if self.pair is None:
            return None
        if not self.pair.done:
            self.message.emit("The answers are still being written; rank them when they are complete.")
            return None
        return self.pair

    def place(self, index: int, tied: bool | None = None) -> bool:
        """Give answer `index` (0-based, shown order) the next place, or the previous one's
        place when tied (default: the pending "tie with previous" toggle). Placing the last
        answer saves the ranking."""
        pair = self._ready()
        if pair is None or not self.draft.place(index, pair.n, tied):
            return False
        self._changed()
        return self.save() if len(self.draft.order) == pair.n else True

    def toggle_tie(self) -> bool:
        """The next answer placed shares the previous answer's place."""
        if self.pair is None or not self.draft.toggle_tie():
            return False
        self._changed()
        return True

    def unplace(self) -> bool:
        """Take back the last place given (before the ranking is saved)."""
        if self.pair is None:
            return False
        self.draft.unplace()
        self._changed()
        return True

    def set_order(self, order: list[int]) -> bool:
        """Take a whole new order (a drag on the page): every answer placed, best first, no
        ties. Not saved until `save` (Enter), so the person can keep rearranging."""
        pair = self._ready()
        if pair is None or not self.draft.set_order(order, pair.n):
            return False
        self._changed()
        return True

    def save(self) -> bool:
        """Store the ranking (unplaced answers tie for last) as one group, committed before
        `saved` moves the controller on to the next prompt."""
        pair = self.pair
        if pair is None or not pair.done or not self.draft.order:
            return False
        order, ties = self.draft.complete(pair.n)
        ok, group = self.ctx.try_save(lambda: self.ctx.project.record_ranking(
            pair.prompt_id, [pair.response_ids[i] for i in order], ties))
        if ok:
            self.saved.emit(group, pair)
        return ok
