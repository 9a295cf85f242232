"""Ranking -> pairs (counts, ties, unranked answers), its storage as one group, undo, and
export of ranked data."""

from __future__ import annotations

import json

import pytest

from dpo_engine.errors import ConfigError, StoreError
from dpo_engine.store.formats import export_pairs, read_rows
from dpo_engine.ranking import complete_ranking, count_pairs, rank_levels, ranking_pairs


def as_tuples(pairs):
    return [(p.better, p.worse, p.tied) for p in pairs]


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6])
def test_strict_ranking_of_k_gives_k_choose_2_pairs_all_best_first(k):
    ranked = list("ABCDEF"[:k])
    pairs = ranking_pairs(ranked)
    assert len(pairs) == k * (k - 1) // 2
    assert not any(p.tied for p in pairs)
    # the better answer always sits higher in the ranking
    assert all(ranked.index(p.better) < ranked.index(p.worse) for p in pairs)
    assert len({(p.better, p.worse) for p in pairs}) == len(pairs)


def test_ties_become_tie_comparisons_not_pairs():
    # A > B = C > D: the module docstring's worked example
    pairs = ranking_pairs(["A", "B", "C", "D"], [False, False, True, False])
    assert as_tuples(pairs) == [("A", "B", False), ("A", "C", False), ("A", "D", False),
                                ("B", "C", True), ("B", "D", False), ("C", "D", False)]
    assert rank_levels([False, False, True, False]) == [0, 1, 1, 2]
    assert count_pairs([0, 1, 1, 2]) == 5
    assert count_pairs([0, 0, 0, 0]) == 0  # all tied: nothing to learn


def test_unranked_answers_tie_for_last():
    order, ties = complete_ranking(["C"], ["A", "B", "C", "D"])
    assert order == ["C", "A", "B", "D"] and ties == [False, False, True, True]
    pairs = ranking_pairs(order, ties)
    assert [(p.better, p.worse) for p in pairs if not p.tied] == [("C", "A"), ("C", "B"), ("C", "D")]
    assert sum(p.tied for p in pairs) == 3


@pytest.mark.parametrize("ranked, ties, match", [
    (["A"], None, "2 to 8"),
    (["A", "A"], None, "twice"),
    (["A", "B"], [True, False], "best answer cannot be tied"),
    (["A", "B"], [False], "tie flags"),
])
def test_bad_rankings_are_refused_with_the_fix(ranked, ties, match):
    with pytest.raises(ConfigError, match=match):
        ranking_pairs(ranked, ties)


def store_ranking(db, texts, order, ties=None, prompt="Q"):
    pid = db.add_prompt(prompt, "test")
    ids = [db.add_response(pid, t, "m") for t in texts]  # shown order = id order
    return pid, ids, db.record_ranking(pid, [ids[i] for i in order], ties)


def test_ranking_is_stored_as_one_group_with_left_right_by_shown_order(fresh_db):
    # shown: a b c d; ranked c > a = d > b
    pid, ids, group = store_ranking(fresh_db, ["a", "b", "c", "d"], [2, 0, 3, 1], [False, False, True, False])
    rows = fresh_db.db.conn.execute(
        "SELECT left_id, right_id, verdict, group_id FROM comparisons ORDER BY id").fetchall()
    assert len(rows) == 6 and {r[3] for r in rows} == {group}
    a, b, c, d = ids
    assert {(l, r): v for l, r, v, _ in rows} == {
        (a, c): "right", (a, d): "tie", (a, b): "left", (c, d): "left", (b, c): "right", (b, d): "right"}
    chosen = {(p.pair.chosen, p.pair.rejected) for p in fresh_db.queries.training_pairs(None)}
    assert chosen == {("c", "a"), ("c", "d"), ("c", "b"), ("a", "b"), ("d", "b")}
    assert fresh_db.queries.stats().by_verdict["tie"] == 1
    # a second ranking gets a new group id
    _, _, second = store_ranking(fresh_db, ["x", "y", "z"], [0, 1, 2], prompt="Q2")
    assert second != group


def test_undo_removes_the_whole_ranking_and_restore_brings_it_back(fresh_db):
    store_ranking(fresh_db, ["keep1", "keep2"], [0, 1], prompt="other")
    _, _, group = store_ranking(fresh_db, ["a", "b", "c", "d"], [0, 1, 2, 3])
    assert fresh_db.queries.counts().comparisons == 7
    assert fresh_db.delete_group(group) == 6
    assert fresh_db.queries.counts().comparisons == 1
    assert [(p.pair.chosen, p.pair.rejected) for p in fresh_db.queries.training_pairs(None)] == [("keep1", "keep2")]
    fresh_db.restore_group(group)
    assert len(fresh_db.queries.training_pairs(None)) == 7


def test_a_failing_ranking_writes_nothing(fresh_db):
    pid = fresh_db.add_prompt("Q", "test")
    other = fresh_db.add_prompt("Other", "test")
    good = fresh_db.add_response(pid, "a", "m")
    foreign = fresh_db.add_response(other, "b", "m")  # answers another prompt
    with pytest.raises(StoreError, match="must both answer"):
        fresh_db.record_ranking(pid, [good, foreign])
    assert fresh_db.queries.counts().comparisons == 0


def test_identical_answers_in_a_ranking_are_no_pair(fresh_db):
    store_ranking(fresh_db, ["same", "same", "other"], [0, 1, 2])
    # same>same teaches nothing; same>other is stored twice with one content hash: one pair
    assert [(p.pair.chosen, p.pair.rejected) for p in fresh_db.queries.training_pairs(None)] == [("same", "other")]


def test_export_of_ranked_data_round_trips(fresh_db, tmp_path):
    store_ranking(fresh_db, ["a", "b", "c", "d"], [3, 2, 1, 0], [False, True, False, False])  # d = c > b > a
    out = tmp_path / "ranked.jsonl"
    assert export_pairs(fresh_db, out, "trl") == 5
    records = [json.loads(line) for line in out.read_text().splitlines()]
    got = {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in records}
    assert got == {("d", "b"), ("d", "a"), ("c", "b"), ("c", "a"), ("b", "a")}
    kind, rows, errors = read_rows(out)
    assert kind == "pairs" and not errors
    assert {(p.chosen, p.rejected) for _, p in rows} == got
