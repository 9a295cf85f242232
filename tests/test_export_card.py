"""The model card from the project a model was trained in: its numbers equal the project's (stats,
the run found by its checkpoint folder, Compare votes through dpo_engine.winrate), the curves are
real PNGs, no prompt or answer text reaches the Markdown, and a card without a project still works."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from dpo_engine.cli.main import main
from dpo_engine.errors import StoreError
from dpo_engine.export import export_model
from dpo_engine.export.facts import project_facts, safe_name
from dpo_engine.export.plots import BLUE, ORANGE, SIZE, nice_ticks
from dpo_engine.store.opening import open_project
from dpo_engine.store.project import normalize_prompt, prompt_key, split_of
from dpo_engine.store.rows import PositionBias
from dpo_engine.winrate import win_rate
from tests.store_helpers import label

EVIL = "<script>alert(1)</script> ![x](http://evil.example/p.png) | cell"  # Markdown/HTML in untrusted text
TRAIN_LOSS = [0.6931, 0.66, 0.61, 0.57, 0.52, 0.50, 0.46, 0.43, 0.41, 0.40]  # steps 1..10
TRAIN_ACC = [0.0, 0.5, 0.5, 0.75, 0.75, 1.0, 0.75, 1.0, 1.0, 1.0]
EVALS = {5: (0.6500, 0.5), 10: (0.5800, 0.75)}  # step -> (eval/loss, eval/rewards/accuracies)


def _prompts(split: str, n: int, prefix: str = "Question") -> list[str]:
    """n prompts that fall in `split` (the split is fixed by a hash of the prompt)."""
    out, i = [], 0
    while len(out) < n:
        text = f"{prefix} {i}: {EVIL}"
        if split_of(prompt_key(normalize_prompt(text))) == split:
            out.append(text)
        i += 1
    return out


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, checking the signature and the chunk's CRC (no Pillow)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29])
    assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def project_path(tmp_path, full_run_dir):
    """A project with labeled pairs in both splits, a ranking, Compare votes between the run's
    checkpoint and the default model, and the run that wrote the checkpoint (plus another run)."""
    path = tmp_path / "project.dpo.sqlite"
    checkpoint = str(full_run_dir)
    with open_project(path) as p:
        train, held = _prompts("train", 6), _prompts("eval", 2)
        for i, prompt in enumerate(train):  # 6 train labels: left, right, left, tie, both_bad, skip
            verdict = ["left", "right", "left", "tie", "both_bad", "skip"][i]
            label(p, prompt, f"answer A{i} {EVIL}", f"longer answer B{i} {EVIL}", verdict)
        for i, prompt in enumerate(held):  # 2 held-out pairs
            label(p, prompt, f"held A{i}", f"held B{i}!", "left")
        pid = p.add_prompt(_prompts("train", 7)[-1], "test")
        ranked = [p.add_response(pid, f"ranked {k} {EVIL}", "tiny") for k in range(3)]
        p.record_ranking(pid, ranked)  # 3 comparisons in one group
        # Compare: the checkpoint vs the default model. (after side, verdict)
        votes = [(0, "left"), (0, "left"), (1, "right"), (1, "left"), (0, "tie"), (1, "both_bad"), (0, "skip")]
        for k, ((side, verdict), text) in enumerate(zip(votes, _prompts("train", len(votes), "compare"))):
            cid = p.add_prompt(text, "typed")
            a = p.add_response(cid, f"after {k} {EVIL}", checkpoint)
            b = p.add_response(cid, f"before {k}", "default")
            left, right = (a, b) if side == 0 else (b, a)
            p.record_comparison(cid, left, right, verdict, source="compare")
        deleted = p.record_comparison(cid, left, right, "right", source="compare")
        p.delete_comparison(deleted)  # an undone vote does not count
        x = p.add_response(cid, "other", "some/other-model")
        p.record_comparison(cid, b, x, "left", source="compare")  # two other models: not this one's vote
        other = p.runs.create({"loss": "sigmoid"})
        p.runs.log_metrics(other, 1, {"eval/rewards/accuracies": 0.0, "loss": 9.0})
        p.runs.finish(other, "finished", checkpoint=str(full_run_dir.parent / "elsewhere"))
        run = p.runs.create({"loss": "sigmoid", "beta": 0.1})
        for step, (loss, acc) in enumerate(zip(TRAIN_LOSS, TRAIN_ACC), start=1):
            p.runs.log_metrics(run, step, {"loss": loss, "rewards/accuracies": acc})
            if step in EVALS:
                p.runs.log_metrics(run, step, {"eval/loss": EVALS[step][0], "eval/rewards/accuracies": EVALS[step][1]})
        # stored as the trainer may name it: not normalised, same folder
        p.runs.finish(run, "finished", checkpoint=str(full_run_dir.parent / "." / full_run_dir.name))
    return path


# --------------------------------------------------------------------------- the card's numbers


def test_card_numbers_equal_the_projects(project_path, full_run_dir, tmp_path):
    out = tmp_path / "card"
    result = export_model(str(full_run_dir), "hf", out, project=project_path)
    card = (out / "README.md").read_text()
    with open_project(project_path, read_only=True) as p:
        s = p.queries.stats()
        assert p.queries.ranking_groups() == 1
    # the fixture's counts, worked out by hand: 6 + 2 labels, 3 ranked (all "left": ranked in id order),
    # 7 live Compare votes + 1 between two other models
    assert s.comparisons == 6 + 2 + 3 + 7 + 1
    assert s.by_verdict == {"left": 2 + 2 + 3 + 3 + 1, "right": 1 + 1, "tie": 1 + 1, "both_bad": 1 + 1,
                               "skip": 1 + 1}
    assert s.pairs_by_split["eval"] == 2 and s.pairs == 3 + 2 + 3 + 4 + 1
    assert s.position_bias == PositionBias(left_wins=2 + 2 + 3, decided=3 + 2 + 3, left_rate=7 / 8)
    assert f"| verdicts (comparisons) | {s.comparisons} (left 11, right 2, tie 2, both bad 2, skip 2) |" in card
    assert "| verdicts by source | compare 8, label 11 |" in card
    assert "| usable pairs | 13 (train 11, held out 2) |" in card
    assert (f"| prompts | {s.prompts} (train {s.prompts_by_split['train']}, held out "
            f"{s.prompts_by_split['eval']}); {s.labeled_prompts} labeled |") in card
    assert "| ranking groups | 1 |" in card
    assert "| position bias | the left answer won 7 of 8 labeled decisions (87.5%) |" in card
    assert (f"| length bias | chosen answers {s.length.chosen_mean:.0f} characters on average, rejected "
            f"{s.length.rejected_mean:.0f} |") in card
    # the run whose checkpoint is this folder, not the other one
    assert "Run 2 of the project (finished). Training loss 0.6931 at step 1, 0.4000 at step 10." in card
    assert "| held-out pairs | first eval (step 5) | at the end (step 10) |" in card
    assert "| preference accuracy | 50.0% | 75.0% |" in card
    assert "| loss | 0.6500 | 0.5800 |" in card
    # Compare: wins 2 (left, after left) + 1 (right, after right); losses 1; ties 1 tie + 1 both bad
    rate, low, high = win_rate(3, 1, 2)
    assert (f"| SmolLM2-135M-Instruct (the default model), the base model | 6 | 3 | 1 | 2 | {rate:.1%} | "
            f"{low:.1%} – {high:.1%} |") in card
    assert "some/other-model" not in card
    assert "![Loss](training_loss.png)" in card and "![Preference accuracy](preference_accuracy.png)" in card
    assert {"README.md", "training_loss.png", "preference_accuracy.png"} <= set(result.files)
    assert "| beta | 0.1 |" in card  # the settings table is still there


def test_no_prompt_or_answer_text_reaches_the_card(project_path, full_run_dir, tmp_path):
    export_model(str(full_run_dir), "hf", tmp_path / "card", project=project_path)
    card = (tmp_path / "card" / "README.md").read_text()
    for fragment in ("<script>", "evil.example", "Question", "answer A", "held A", "ranked", "compare 0"):
        assert fragment not in card
    assert str(full_run_dir.parent) not in card  # no local path of the person's either


def test_the_curves_are_pngs_of_the_right_size_with_both_series(project_path, full_run_dir, tmp_path):
    from PIL import Image

    out = tmp_path / "card"
    export_model(str(full_run_dir), "hf", out, project=project_path)
    for name in ("training_loss.png", "preference_accuracy.png"):
        assert _png_size(out / name) == SIZE
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            colours = {c for _, c in image.convert("RGB").getcolors(1 << 20)}
        assert BLUE in colours and ORANGE in colours  # the train line and the held-out dots are drawn


def test_facts_find_the_run_by_its_folder_and_count_votes_for_this_model(project_path, full_run_dir):
    facts = project_facts(project_path, str(full_run_dir), full_run_dir, "default")
    assert facts.run.id == 2
    assert facts.first_last("eval/rewards/accuracies") == ((5, 0.5), (10, 0.75))
    assert facts.first_last("eval/loss") == ((5, 0.65), (10, 0.58))
    [m] = facts.matchups
    assert (m.wins, m.losses, m.ties, m.votes) == (3, 1, 2, 6)
    assert (m.rate, m.low, m.high) == win_rate(3, 1, 2)
    # seen from the default model's side, the same votes are the mirror image
    d, other = project_facts(project_path, "default", None).matchups
    assert (d.wins, d.losses, d.ties) == (1, 3, 2) and d.opponent == "full"
    assert (other.opponent, other.wins, other.losses) == ("some/other-model", 1, 0)  # b, on the left, chosen
    assert project_facts(project_path, "nothing", None).matchups == ()


def test_a_model_no_run_wrote_gets_no_training_facts(project_path, bpe_model_dir, tmp_path):
    out = tmp_path / "plain"
    result = export_model(str(bpe_model_dir), "hf", out, project=project_path)
    card = (out / "README.md").read_text()
    assert "No run of the project wrote this model's folder" in card
    assert "## Data" not in card and not any(f.endswith(".png") for f in result.files)


def test_one_eval_is_one_column_and_the_base_is_named_not_located(lora_run_dir, bpe_model_dir, tmp_path):
    path = tmp_path / "p.dpo.sqlite"
    with open_project(path) as p:
        run = p.runs.create({"loss": "sigmoid"})
        p.runs.log_metrics(run, 3, {"loss": 0.5, "eval/loss": 0.61, "eval/rewards/accuracies": 0.25})
        p.runs.finish(run, "stopped", checkpoint=str(lora_run_dir))
    export_model(str(lora_run_dir), "peft", tmp_path / "adapter", project=path)
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert ("| held-out pairs | at the end (step 3) |\n|---|---|\n| preference accuracy | 25.0% |\n"
            "| loss | 0.6100 |") in card
    assert "Run 1 of the project (stopped)" in card
    assert f"Fine-tuned from {bpe_model_dir.name} with DPO" in card and str(bpe_model_dir) not in card


def test_a_card_without_a_project_still_works(full_run_dir, tmp_path):
    result = export_model(str(full_run_dir), "hf", tmp_path / "plain")
    card = (tmp_path / "plain" / "README.md").read_text()
    assert "| beta | 0.1 |" in card and "## Use it" in card
    assert "## Data" not in card and "## Results" not in card
    assert not any(f.endswith(".png") for f in result.files)


def test_an_ollama_folder_carries_the_full_card_too(project_path, full_run_dir, tmp_path):
    result = export_model(str(full_run_dir), "ollama", tmp_path / "smol", project=project_path)
    assert set(result.files) == {"smol.gguf", "Modelfile", "README.md", "training_loss.png", "preference_accuracy.png"}
    card = (tmp_path / "smol" / "README.md").read_text()
    assert "library_name: gguf" in card and "| preference accuracy | 50.0% | 75.0% |" in card and "## Data" in card


def test_gguf_carries_no_card_even_with_a_project(project_path, bpe_model_dir, tmp_path):
    export_model(str(bpe_model_dir), "gguf", tmp_path / "m.gguf", project=project_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("project")] == ["m.gguf"]


def test_a_bad_project_fails_before_anything_is_written(full_run_dir, tmp_path):
    not_a_project = tmp_path / "notes.txt"
    not_a_project.write_text("hello")
    for bad in (not_a_project, tmp_path / "missing.dpo.sqlite"):
        with pytest.raises(StoreError):
            export_model(str(full_run_dir), "hf", tmp_path / "out", project=bad)
        assert not (tmp_path / "out").exists()
    assert not_a_project.read_text() == "hello"


def test_names_in_the_card_are_markdown_safe():
    assert safe_name("run | 3 <b>") == "run___3__b_"
    assert safe_name("x" * 100).startswith("…") and len(safe_name("x" * 100)) == 60


def test_nice_ticks_cover_the_range_with_round_steps():
    assert nice_ticks(0.03, 0.72) == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert nice_ticks(1, 2, min_step=1) == [1, 2]  # optimizer steps are whole numbers
    assert nice_ticks(0, 12, min_step=1) == [0, 5, 10, 15]


# --------------------------------------------------------------------------- the command


def test_cli_project_option_writes_the_full_card(project_path, full_run_dir, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(main, ["export-model", str(full_run_dir), "--format", "hf", "--output", str(out),
                                       "--project", str(project_path)])
    assert result.exit_code == 0, result.output
    card = (out / "README.md").read_text()
    assert "| preference accuracy | 50.0% | 75.0% |" in card and "| ranking groups | 1 |" in card
    assert _png_size(out / "training_loss.png") == SIZE
    bad = CliRunner().invoke(main, ["export-model", str(full_run_dir), "--format", "hf", "--output",
                                    str(tmp_path / "no"), "--project", str(tmp_path / "missing.sqlite")])
    assert bad.exit_code == 1 and "Error:" in bad.stderr and "Traceback" not in bad.output
    assert not (tmp_path / "no").exists()
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"



# --------------------------------------------------------------------------- a real run


def test_a_real_run_recorded_in_a_project_gets_its_own_numbers(bpe_model_dir, tmp_path, monkeypatch):
    """drive() records a real (tiny) run in the project; the card finds it by the checkpoint the
    trainer wrote and shows the eval metrics under the names the trainer stores."""
    from dpo_engine.train.config import TrainConfig
    from dpo_engine.train.driver import drive

    monkeypatch.setenv("DPO_STUDIO_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "real.dpo.sqlite"
    with open_project(path) as p:
        for i, prompt in enumerate(_prompts("train", 8) + _prompts("eval", 2)):
            label(p, prompt, "yes " * (1 + i % 3), "no " * (1 + i % 2), "left" if i % 2 else "right")
    config = TrainConfig(output_dir=str(tmp_path / "replaced"), model=str(bpe_model_dir), lr=1e-3, batch_size=4,
                         grad_accum=1, warmup_ratio=0.0, device="cpu", seed=3, max_steps=4, eval_every=2)
    events = list(drive(config, project=path, output_for_run=lambda run_id: tmp_path / f"run-{run_id}"))
    checkpoint = events[-1].checkpoint
    assert events[-1].status == "finished" and checkpoint
    out = tmp_path / "card"
    export_model(checkpoint, "hf", out, project=path)
    card = (out / "README.md").read_text()
    with open_project(path, read_only=True) as p:
        [run] = p.queries.runs()
        metrics = p.queries.metrics(run.id)
    acc, loss = metrics["eval/rewards/accuracies"], metrics["eval/loss"]
    assert [s for s, _ in acc] == [2, 4]  # eval every 2 steps and at the end
    assert f"| preference accuracy | {acc[0][1]:.1%} | {acc[-1][1]:.1%} |" in card
    assert f"| loss | {loss[0][1]:.4f} | {loss[-1][1]:.4f} |" in card
    assert f"Run {run.id} of the project (finished)" in card
    assert "| usable pairs | 10 (train 8, held out 2) |" in card
    assert _png_size(out / "training_loss.png") == SIZE and _png_size(out / "preference_accuracy.png") == SIZE
    # the precision the held-out numbers were scored in (the run's, fp32 here: tests pin it)
    assert "| precision | float32 (fp32: set by DPO_STUDIO_DTYPE) |" in card
    assert "scored during training, in the run's precision: float32 (fp32: set by DPO_STUDIO_DTYPE)" in card


def test_a_bf16_run_says_its_held_out_numbers_were_scored_in_bf16():
    from dpo_engine.export.card import _precision_words

    words = _precision_words({"dtype": "bfloat16", "autocast": True, "device": "cpu",
                              "reason": "bf16: CPU has avx512_bf16, matmul 1.9x fp32"})
    assert words == "bfloat16 autocast over fp32 weights (bf16: CPU has avx512_bf16, matmul 1.9x fp32)"
    assert _precision_words(None) == "" and _precision_words({}) == ""
