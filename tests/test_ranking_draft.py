"""The Label page's ranking in progress: places, ties, take-backs and a dragged order."""

from app.controllers.ranking_draft import RankingDraft


def test_places_ties_and_take_backs():
    d = RankingDraft()
    assert not d.toggle_tie()  # nothing placed: nothing to tie with
    assert d.place(2, 4) and not d.place(2, 4) and not d.place(4, 4)  # placed twice / out of range
    assert d.toggle_tie() and d.tie_next
    assert d.place(0, 4) and (d.order, d.ties, d.tie_next) == ([2, 0], [False, True], False)
    d.toggle_tie()
    d.unplace()  # first the pending tie
    assert (d.order, d.tie_next) == ([2, 0], False)
    d.unplace()  # then the last place
    assert (d.order, d.ties) == ([2], [False])
    assert d.place(3, 4, tied=True)
    assert d.complete(4) == ([2, 3, 0, 1], [False, True, False, True])  # unplaced answers tie for last


def test_a_dragged_order_replaces_the_places_without_ties():
    d = RankingDraft()
    d.place(1, 3)
    d.toggle_tie()
    assert not d.set_order([0, 1], 3) and not d.set_order([0, 0, 1], 3)
    assert d.set_order([2, 0, 1], 3)
    assert (d.order, d.ties, d.tie_next) == ([2, 0, 1], [False] * 3, False)
    d.clear()
    assert (d.order, d.ties, d.tie_next) == ([], [], False)
