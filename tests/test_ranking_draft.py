"""The Label page's ranking in progress: places, ties, take-backs and a dragged order; what
the page shows of it."""

from app.controllers.label_ranking import RankingDraft, RankingState


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


def test_the_state_the_page_shows():
    # placed 3 = 1 > 4, the next place pending a tie; answer 2 unplaced (n = 4)
    state = RankingState(4, (2, 0, 3), (False, True, False), tie_next=True)
    assert state.summary() == "3 = 1 > 4 = …"
    assert [state.place_of(i) for i in range(4)] == [(0, True), None, (0, True), (1, False)]
    assert RankingState(4, (), (), tie_next=False).summary() == ""
    assert RankingState(3, (1,), (False,), tie_next=False).summary() == "2"
