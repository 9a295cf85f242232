import json

import pytest
from click.testing import CliRunner

from dpo_engine.cli.main import main
from dpo_engine.errors import ConfigError
from dpo_engine.generate import GenerationSettings, TokenEvent, generate, stream_generate
from dpo_engine.iters import drain


def test_stream_yields_tokens_and_final_text_matches(tiny_loaded):
    settings = GenerationSettings(max_new_tokens=12, temperature=1.0, top_p=1.0, seed=3)
    stream = stream_generate(tiny_loaded.model, tiny_loaded.tokenizer, "hi", n=2, settings=settings)
    pieces = {0: "", 1: ""}
    events = 0
    seen = []
    result = drain(stream, seen.append)
    for ev in seen:
        assert isinstance(ev, TokenEvent)
        pieces[ev.index] += ev.delta
        events += 1
    assert events > 0
    assert len(result.texts) == 2
    for i in range(2):
        assert result.texts[i] == pieces[i].strip()
        assert 0 < result.token_counts[i] <= 12


def test_same_seed_same_answers_different_seed_differs(tiny_loaded):
    m, t = tiny_loaded.model, tiny_loaded.tokenizer
    a = generate(m, t, "hello", n=2, settings=GenerationSettings(max_new_tokens=16, temperature=1.0, seed=7))
    b = generate(m, t, "hello", n=2, settings=GenerationSettings(max_new_tokens=16, temperature=1.0, seed=7))
    c = generate(m, t, "hello", n=2, settings=GenerationSettings(max_new_tokens=16, temperature=1.0, seed=8))
    assert a.texts == b.texts
    assert a.texts != c.texts


def test_greedy_equals_transformers_generate(tiny_loaded):
    """Our KV-cached loop must produce exactly what transformers' greedy decoding does."""
    import torch

    from dpo_engine.generate import encode_prompt

    m, t = tiny_loaded.model, tiny_loaded.tokenizer
    ours = generate(m, t, "abc", n=1, settings=GenerationSettings(max_new_tokens=10, temperature=0))
    ids = torch.tensor([encode_prompt(t, "abc")])
    ref = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                     eos_token_id=t.eos_token_id, pad_token_id=t.pad_token_id)
    new = ref[0, ids.shape[1]:].tolist()
    if t.eos_token_id in new:
        new = new[: new.index(t.eos_token_id)]
    assert ours.texts[0] == t.decode(new, skip_special_tokens=True).strip()


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="top_p"):
        GenerationSettings(top_p=0)
    with pytest.raises(ConfigError, match="temperature"):
        GenerationSettings(temperature=-1)


def test_cli_generate_json(tiny_model_dir):
    result = CliRunner().invoke(
        main, ["generate", "--model", str(tiny_model_dir), "--prompt", "hi", "-n", "2",
               "--max-new-tokens", "8", "--seed", "1", "--device", "cpu", "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["device"] == "cpu, float32"
    assert len(payload["responses"]) == 2


def test_cli_bad_model_is_a_message_not_a_traceback(tmp_path):
    result = CliRunner().invoke(main, ["generate", "--model", str(tmp_path / "a" / "b"), "--prompt", "x"])
    assert result.exit_code == 1
    assert "Error: No model at" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.integration
def test_default_model_gives_two_different_answers():
    result = CliRunner().invoke(
        main, ["generate", "--prompt", "Give me a tip for staying focused while studying.", "-n", "2",
               "--max-new-tokens", "40", "--seed", "0", "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    a, b = payload["responses"]
    assert a.strip() and b.strip() and a != b
    assert payload["model"] == "SmolLM2-135M-Instruct"


def test_relabeled_stream_moves_events_to_their_sides_and_returns_the_result(tiny_loaded):
    from dpo_engine.generate import relabeled

    settings = GenerationSettings(max_new_tokens=6, temperature=1.0, seed=2)
    stream = relabeled(stream_generate(tiny_loaded.model, tiny_loaded.tokenizer, "hi", 2, settings), (3, 1))
    seen = set()
    result = drain(stream, lambda ev: seen.add(ev.index))
    assert seen <= {3, 1} and seen
    assert len(result.texts) == 2
