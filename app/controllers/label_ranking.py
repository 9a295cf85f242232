"""Ranking mode of the Label page's controller: placing answers best first (ties allowed),
a whole order from a drag, and saving the ranking as one group. The places in progress are
a `RankingDraft`; this turns the person's actions into it and stores the result.

A mixin of `LabelController`, which provides what it uses: `current` (the prompt on
screen), `draft`, `ctx`, the signals `rankingChanged` and `message`, and `_recorded` (what
follows every stored verdict: undo history, progress, the next prompt)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.controllers.label_controller import PendingPair


class RankingActions:
    """The ranking actions of `LabelController` (keys and drags of the Label page)."""

    # the page reads the draft through these
    order = property(lambda self: list(self.draft.order))
    ties = property(lambda self: list(self.draft.ties))
    tie_next = property(lambda self: self.draft.tie_next)

    def _ranking_changed(self) -> None:
        self.rankingChanged.emit(self.order, self.ties)

    def _clear_places(self) -> None:
        self.draft.clear()
        self._ranking_changed()

    def _ready_to_rank(self) -> PendingPair | None:
        pair = self.current
        if pair is None or not pair.ranking:
            return None
        if not pair.done:
            self.message.emit("The answers are still being written; rank them when they are complete.")
            return None
        return pair

    def place(self, index: int, tied: bool | None = None) -> bool:
        """Give answer `index` (0-based, shown order) the next place, or the previous one's
        place when tied (default: the pending "tie with previous" toggle). Placing the last
        answer saves the ranking."""
        pair = self._ready_to_rank()
        if pair is None or not self.draft.place(index, pair.n, tied):
            return False
        self._ranking_changed()
        return self.save_ranking() if len(self.draft.order) == pair.n else True

    def toggle_tie(self) -> None:
        """The next answer placed shares the previous answer's place."""
        if self.draft.toggle_tie():
            self._ranking_changed()

    def unplace(self) -> None:
        """Take back the last place given (before the ranking is saved)."""
        self.draft.unplace()
        self._ranking_changed()

    def set_order(self, order: list[int]) -> bool:
        """Take a whole new order (a drag on the page): every answer placed, best first, no
        ties. Not saved until `save_ranking` (Enter), so the person can keep rearranging."""
        pair = self._ready_to_rank()
        if pair is None or not self.draft.set_order(order, pair.n):
            return False
        self._ranking_changed()
        return True

    def save_ranking(self) -> bool:
        """Store the ranking (unplaced answers tie for last) as one group, committed before
        the next prompt shows."""
        pair = self.current
        if pair is None or not pair.ranking or not pair.done or not self.draft.order:
            return False
        order, ties = self.draft.complete(pair.n)
        ok, group = self.ctx.try_save(lambda: self.ctx.project.record_ranking(
            pair.prompt_id, [pair.response_ids[i] for i in order], ties))
        return ok and self._recorded(group, pair, "ranking")
