"""The project store: verdicts → pairs, dedupe, splits, undo, runs, file safety, migration."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading

import pytest

from dpo_engine.errors import ConfigError, DataError, NotAProjectError, ProjectLockedError, StoreError
from dpo_engine.pairs import PreferencePair
from dpo_engine.store.opening import open_project
from dpo_engine.store.rows import Counts, LengthMeans, PositionBias, StoredPrompt
from dpo_engine.store.schema import CURRENT_VERSION, create_v1
from tests.store_helpers import label, sample_pairs


def test_verdicts_map_to_chosen_and_rejected(fresh_db):
    label(fresh_db, "q1", "L1", "R1", "left")
    label(fresh_db, "q2", "L2", "R2", "right")
    for verdict in ("tie", "both_bad", "skip"):
        label(fresh_db, f"q-{verdict}", "x", "y", verdict)
    label(fresh_db, "q-same", "same text", "same text", "left")  # nothing to prefer
    pairs = {p.pair.prompt_text: (p.pair.chosen, p.pair.rejected) for p in fresh_db.queries.training_pairs(None)}
    assert pairs == {"q1": ("L1", "R1"), "q2": ("R2", "L2")}
    assert fresh_db.queries.stats().by_verdict == {"left": 2, "right": 1, "tie": 1, "both_bad": 1, "skip": 1}


def test_cut_off_answers_reach_training_as_unfinished(fresh_db):
    """The Label page stores {"finished": false} for an answer cut off at the token cap; the
    training pair carries it on the side it ends up on (chosen or rejected)."""
    pid = fresh_db.add_prompt("q", "label")
    done = fresh_db.add_response(pid, "short", "m", {"max_new_tokens": 8}, finished=True)
    cut = fresh_db.add_response(pid, "long long long", "m", {"max_new_tokens": 8}, finished=False)
    legacy = fresh_db.add_response(pid, "no settings", "m")
    fresh_db.record_comparison(pid, cut, done, "right")  # the finished answer (right) wins
    fresh_db.record_comparison(pid, cut, legacy, "left")  # the cut-off answer (left) wins
    (a, b) = [sp.pair for sp in fresh_db.queries.training_pairs(None)]
    assert (a.chosen, a.chosen_finished, a.rejected, a.rejected_finished) == ("short", True, "long long long", False)
    assert (b.chosen, b.chosen_finished, b.rejected, b.rejected_finished) == ("long long long", False, "no settings",
                                                                              True)


def test_labeling_prompt_becomes_a_user_message_and_is_stored_once(fresh_db):
    a = fresh_db.add_prompt("Hello", "starter")
    ids = fresh_db.add_prompts(["Hello", [{"role": "user", "content": "Hello"}], "Other"], "starter")
    assert ids[0] == ids[1] == a and ids[2] != a
    assert {p.id: p.prompt for p in fresh_db.queries.prompts()}[a] == (("user", "Hello"),)


@pytest.mark.parametrize("bad", ["", "   ", [], [{"role": "wizard", "content": "x"}], [{"content": "x"}]])
def test_invalid_prompts_are_refused(fresh_db, bad):
    with pytest.raises(DataError, match="empty|list|role"):
        fresh_db.add_prompt(bad, "test")


def test_split_is_stable_and_about_ten_percent_eval(tmp_path):
    prompts = [f"prompt {i}" for i in range(2000)]
    splits = []
    for name in ("a", "b"):
        with open_project(tmp_path / f"{name}.sqlite") as project:
            ids = project.add_prompts(prompts if name == "a" else prompts[::-1], "test")
            split_of = dict(project.db.conn.execute("SELECT id, split FROM prompts").fetchall())
            splits.append({p: split_of[i] for p, i in zip(prompts if name == "a" else prompts[::-1], ids)})
    assert splits[0] == splits[1]  # same prompt, same split, whatever the insertion order
    eval_share = sum(s == "eval" for s in splits[0].values()) / len(prompts)
    assert 0.07 < eval_share < 0.13


def test_unlabeled_prompts_come_first(fresh_db):
    labeled = fresh_db.add_prompt("labeled", "test")
    fresh_db.add_prompt("fresh", "test")
    a, b = (fresh_db.add_response(labeled, t, "m", None) for t in ("x", "y"))
    fresh_db.record_comparison(labeled, a, b, "left")
    assert [p.id for p in fresh_db.queries.prompts()][-1] == labeled
    assert [p.id for p in fresh_db.queries.prompts(unlabeled_first=False)][0] == labeled
    fresh = fresh_db.add_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], "t")
    first = fresh_db.add_prompt("fresh", "test")  # already stored: same id as before
    assert fresh_db.queries.next_prompt() == StoredPrompt(first, (("user", "fresh"),))  # unlabeled, oldest first
    assert fresh_db.queries.next_prompt(exclude={first}) == \
        StoredPrompt(fresh, (("system", "Be brief."), ("user", "hi")))
    assert fresh_db.queries.next_prompt(exclude=[first, fresh]) == \
        StoredPrompt(labeled, (("user", "labeled"),))  # then labeled ones
    assert fresh_db.queries.next_prompt(exclude={first, fresh, labeled}) is None


def test_delete_restore_and_flip(fresh_db):
    cid = label(fresh_db, "q", "L", "R", "left")
    fresh_db.delete_comparison(cid)
    assert fresh_db.queries.training_pairs(None) == [] and fresh_db.queries.stats().comparisons == 0
    fresh_db.restore_comparison(cid)
    fresh_db.set_verdict(cid, "right")
    [stored] = fresh_db.queries.training_pairs(None)
    assert (stored.pair.chosen, stored.pair.rejected, stored.comparison_id) == ("R", "L", cid)
    with pytest.raises(StoreError, match="does not exist"):
        fresh_db.delete_comparison(cid + 100)
    with pytest.raises(StoreError, match="does not exist"):
        fresh_db.set_verdict(cid + 100, "left")


def test_record_comparison_validates(fresh_db):
    pid = fresh_db.add_prompt("q", "test")
    other = fresh_db.add_prompt("other", "test")
    a, b = (fresh_db.add_response(pid, t, "m") for t in ("x", "y"))
    c = fresh_db.add_response(other, "z", "m")
    with pytest.raises(ConfigError, match="verdict must be one of"):
        fresh_db.record_comparison(pid, a, b, "better")
    with pytest.raises(StoreError, match="must both answer prompt"):
        fresh_db.record_comparison(pid, a, c, "left")
    cid = fresh_db.record_comparison(pid, a, b, "tie", strength=0.5, note="meh", group=7)
    row = fresh_db.queries.comparison(cid)
    assert (row.strength, row.note, row.group, row.source) == (0.5, "meh", 7, "label")


def test_imported_pairs_are_deduplicated_by_content(fresh_db):
    pairs = sample_pairs()
    assert fresh_db.import_pairs(pairs + pairs[:2]) == (len(pairs), 2)
    assert fresh_db.import_pairs(pairs) == (0, len(pairs))
    assert sorted(p.pair.content_hash() for p in fresh_db.queries.training_pairs(None)) == \
        sorted(p.content_hash() for p in pairs)
    assert fresh_db.queries.stats().by_source == {"import": len(pairs)}


def test_stats_position_and_length_bias(fresh_db):
    label(fresh_db, "q1", "long answer", "s", "left")
    label(fresh_db, "q2", "a", "bbb", "left")
    label(fresh_db, "q3", "aa", "b", "right")
    label(fresh_db, "q4", "aa", "b", "tie")
    fresh_db.add_prompt("unlabeled", "test")
    s = fresh_db.queries.stats()
    assert s.position_bias == PositionBias(left_wins=2, decided=3, left_rate=2 / 3)
    assert s.length == LengthMeans(chosen_mean=(11 + 1 + 1) / 3, rejected_mean=(1 + 3 + 2) / 3)
    assert (s.prompts, s.labeled_prompts, s.pairs, s.comparisons) == (5, 4, 3, 4)
    assert s.labeled_fraction == 4 / 5


def test_runs_metrics_and_models(fresh_db):
    run = fresh_db.runs.create({"beta": 0.1, "lr": 5e-7})
    fresh_db.runs.log_metrics(run, 1, {"loss": 0.69, "rewards/chosen": 0.0})
    fresh_db.runs.log_metrics(run, 2, {"loss": 0.5, "rewards/chosen": 0.2})
    fresh_db.runs.finish(run, "finished", checkpoint="/ckpt/1")
    [r] = fresh_db.queries.runs()
    assert (r.status, r.config["beta"], r.checkpoint) == ("finished", 0.1, "/ckpt/1")
    assert r.ended >= r.started
    assert fresh_db.queries.metrics(run) == {"loss": [(1, 0.69), (2, 0.5)], "rewards/chosen": [(1, 0.0), (2, 0.2)]}
    base = fresh_db.runs.add_model("default", "base")
    ckpt = fresh_db.runs.add_model("/ckpt/1", "checkpoint", parent="default", run_id=run)
    assert fresh_db.runs.add_model("default", "base") == base
    assert [(m.id, m.kind, m.parent, m.run_id) for m in fresh_db.queries.models()] == \
        [(base, "base", None, None), (ckpt, "checkpoint", "default", run)]
    with pytest.raises(ConfigError):
        fresh_db.runs.finish(run, "exploded")


def test_run_summaries_carry_each_series_last_point(fresh_db):
    """The last point is the one `metrics` lists last: highest step, and of a step logged again
    (a resume re-runs the steps after its checkpoint) the later record."""
    a = fresh_db.runs.create({})
    for step, loss in ((1, 0.7), (2, 0.6), (3, 0.5)):
        fresh_db.runs.log_metrics(a, step, {"loss": loss, "rewards/chosen": 0.1 * step})
    fresh_db.runs.log_metrics(a, 3, {"loss": 0.45})  # step 3 again, after a resume
    fresh_db.runs.log_metrics(a, 2, {"eval/loss": 0.8})
    b = fresh_db.runs.create({})  # logged nothing
    summaries = fresh_db.queries.run_summaries(["loss", "eval/loss", "loss"])
    assert [s.run for s in summaries] == fresh_db.queries.runs() == [fresh_db.queries.run(a), fresh_db.queries.run(b)]
    assert summaries[0].last == {"loss": (3, 0.45), "eval/loss": (2, 0.8)}  # only the names asked for
    assert summaries[0].last["loss"] == fresh_db.queries.metrics(a)["loss"][-1]
    assert (summaries[1].last, summaries[1].value("loss")) == ({}, None)
    assert fresh_db.queries.run(b + 1) is None and fresh_db.queries.run_summaries([])[0].last == {}


def test_run_config_updates_and_a_missing_run(fresh_db):
    run = fresh_db.runs.create({"beta": 0.1})
    fresh_db.runs.set_config(run, {"beta": 0.2, "output_dir": "/out/run-1"})
    fresh_db.runs.annotate(run, precision={"dtype": "float32"})
    [r] = fresh_db.queries.runs()
    assert r.config == {"beta": 0.2, "output_dir": "/out/run-1", "precision": {"dtype": "float32"}}
    for change in (lambda: fresh_db.runs.finish(run + 1, "failed"), lambda: fresh_db.runs.set_config(run + 1, {}),
                   lambda: fresh_db.runs.annotate(run + 1, x=1)):
        with pytest.raises(ConfigError, match=f"No run {run + 1} in this project"):
            change()
    assert [r.status for r in fresh_db.queries.runs()] == ["running"]  # nothing else changed


def test_file_settings_and_durability(project_file):
    with open_project(project_file) as project:
        conn = project.db.conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        cid = label(project, "q", "a", "b", "left")
    with open_project(project_file) as project:
        assert project.queries.comparison(cid).verdict == "left"


def test_each_thread_opens_its_own_project(project_file):
    main = open_project(project_file)
    errors = []

    def worker():
        try:
            with open_project(project_file) as mine:  # same process: the lock is shared
                label(mine, "from thread", "a", "b", "right")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert not errors
    assert [p.pair.chosen for p in main.queries.training_pairs(None)] == ["b"]
    main.close()


@pytest.mark.parametrize("content", [b"hello, this is not a database\n" * 50, b"SQLite format 3\x00" + b"\x10" * 84])
def test_garbage_file_is_refused_and_untouched(tmp_path, content):
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(content)
    with pytest.raises(NotAProjectError, match=str(path)):
        open_project(path)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.sqlite"]


def test_truncated_project_is_refused_and_untouched(project_file):
    with open_project(project_file) as project:
        project.import_pairs([PreferencePair(f"q{i}", "a" * 500, "b") for i in range(300)])
        project.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = project_file.read_bytes()
    project_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(NotAProjectError, match="truncated"):
        open_project(project_file)
    assert project_file.read_bytes() == data[: len(data) // 2]


def test_other_programs_sqlite_file_is_refused(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (x)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(NotAProjectError, match="another program"):
        open_project(path)
    assert path.read_bytes() == before


HOLDER = """
import sys
from dpo_engine.store.opening import open_project
p = open_project(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
"""


def test_second_process_is_told_who_holds_the_project(project_file):
    with open_project(project_file) as project:
        label(project, "q", "a", "b", "left")
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(project_file)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(ProjectLockedError, match=f"pid {child.pid}"):
            open_project(project_file)
        with open_project(project_file, read_only=True) as ro:  # reading still works
            assert len(ro.queries.training_pairs(None)) == 1
            with pytest.raises(StoreError, match="read-only"):
                label(ro, "q2", "a", "b", "left")
    finally:
        child.communicate("\n", timeout=10)
    open_project(project_file).close()  # free again once the other process ends


def test_migration_from_version_1(project_file):
    conn = sqlite3.connect(project_file, isolation_level=None)
    create_v1(conn)
    conn.executescript("""
        INSERT INTO prompts VALUES (1, 'k1', 'Hi', '[["user", "Hi"]]', 'label', 'train', 0);
        INSERT INTO responses VALUES (1, 1, 'Hello!', 'm', NULL, 0), (2, 1, 'Go away.', 'm', NULL, 0);
        INSERT INTO comparisons VALUES (1, 1, 1, 2, 'right', NULL, NULL, 'label', 0);
        INSERT INTO comparisons VALUES (2, 1, 1, 2, 'tie', NULL, NULL, 'label', 0);
    """)
    conn.close()
    with open_project(project_file) as project:
        assert project.db.conn.execute("PRAGMA user_version").fetchone()[0] == CURRENT_VERSION == 3
        [stored] = project.queries.training_pairs(None)
        assert stored.pair == PreferencePair((("user", "Hi"),), "Go away.", "Hello!")
        # the backfilled hash recognises the same pair when it is imported again
        assert project.import_pairs([stored.pair]) == (0, 1)
        project.delete_comparison(2)  # the new soft-delete column works on old rows
        assert project.queries.stats().comparisons == 1


def test_migration_from_version_2_moves_finished_into_a_column(project_file):
    """Version 2 kept "finished" in the settings JSON; version 3 has a column, backfilled."""
    from dpo_engine.store.schema import MIGRATIONS

    conn = sqlite3.connect(project_file, isolation_level=None)
    create_v1(conn)
    MIGRATIONS[0](conn)
    conn.execute("PRAGMA user_version = 2")
    conn.executescript("""
        INSERT INTO prompts VALUES (1, 'k1', 'q', NULL, 'label', 'train', 0);
        INSERT INTO responses VALUES
            (1, 1, 'cut', 'm', '{"max_new_tokens": 8, "finished": false}', 0),
            (2, 1, 'ended', 'm', '{"max_new_tokens": 8, "finished": true}', 0),
            (3, 1, 'legacy', 'm', NULL, 0),
            (4, 1, 'odd', 'm', 'not json', 0);
    """)
    conn.close()
    with open_project(project_file) as project:
        rows = project.db.conn.execute("SELECT id, finished, settings FROM responses ORDER BY id").fetchall()
        assert rows == [(1, 0, '{"max_new_tokens":8}'), (2, 1, '{"max_new_tokens":8}'), (3, None, None),
                        (4, None, "not json")]
        for left, right in ((1, 2), (1, 3), (4, 1)):
            project.record_comparison(1, left, right, "left")
        flags = [(sp.pair.chosen, sp.pair.chosen_finished, sp.pair.rejected_finished)
                 for sp in project.queries.training_pairs(None)]
        assert flags == [("cut", False, True), ("cut", False, True), ("odd", True, False)]


def test_counts_agree_with_stats(fresh_db):
    fresh_db.import_pairs(sample_pairs())
    label(fresh_db, "q", "a", "b", "tie")
    cid = label(fresh_db, "q2", "a", "b", "left")
    fresh_db.delete_comparison(cid)
    s, c = fresh_db.queries.stats(), fresh_db.queries.counts()
    assert c == Counts(prompts=s.prompts, comparisons=s.comparisons,
                      train_pairs=s.pairs_by_split["train"], eval_pairs=s.pairs_by_split["eval"])
    assert c.comparisons == len(sample_pairs()) + 1
