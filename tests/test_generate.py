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


# ---------------------------------------------------------------------------- several prompts in one batch
GREEDY = GenerationSettings(max_new_tokens=12, temperature=0)
PROMPTS = ["hi", "a much longer prompt that needs a lot of left padding in the batch", "abc"]


@pytest.fixture(scope="module")
def lively(tiny_model_dir):
    """The tiny model with its weights scaled up 3x: greedy answers then depend on the
    prompt (the plain random one repeats a single token whatever it reads)."""
    import torch

    from dpo_engine.devices import pick_device
    from dpo_engine.models import load_model

    loaded = load_model(str(tiny_model_dir), pick_device("cpu"))
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.mul_(3)
    return loaded


def greedy_ids(loaded, prompt, n=12):
    """transformers' own greedy decoding of `prompt` alone: the reference."""
    import torch

    from dpo_engine.generate import encode_prompt

    ids = torch.tensor([encode_prompt(loaded.tokenizer, prompt)])
    out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                eos_token_id=loaded.tokenizer.eos_token_id, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def alone(loaded, prompt, settings=GREEDY):
    return generate(loaded.model, loaded.tokenizer, prompt, 1, settings)


def test_batched_greedy_rows_of_different_lengths_equal_each_prompt_alone(lively):
    """Left padding, the attention mask and per-row position ids make each row's answer the
    one its prompt gets alone; a prompt listed twice (its forward shared) gets it twice."""
    from dpo_engine.generate import RowEnded, encode_prompt, stream_generate_batch

    t = lively.tokenizer
    prompts = PROMPTS + [PROMPTS[0], [{"role": "user", "content": "chat form"}]]
    assert len({len(encode_prompt(t, p)) for p in prompts}) >= 3  # really different lengths
    events = []
    result = drain(stream_generate_batch(lively.model, t, prompts, GREEDY), events.append)
    expected = [alone(lively, p) for p in prompts]
    assert result.texts == [e.texts[0] for e in expected]
    assert result.token_counts == [e.token_counts[0] for e in expected]
    assert result.texts[0] == t.decode(greedy_ids(lively, prompts[0]), skip_special_tokens=True).strip()
    assert len(set(result.texts)) == 4  # the answers really differ by prompt (row 3 repeats row 0)
    streamed = {i: "" for i in range(len(prompts))}
    for ev in events:
        if isinstance(ev, TokenEvent):
            streamed[ev.index] += ev.delta
    # streamed text is the answer so far (a half multi-byte character waits for the final text)
    assert all(result.texts[i].startswith(streamed[i].strip()) and streamed[i] for i in streamed)
    ended = [ev for ev in events if isinstance(ev, RowEnded)]
    assert sorted(ev.index for ev in ended) == list(range(len(prompts)))  # each row ends exactly once
    assert all(ev.text == result.texts[ev.index] and ev.tokens == result.token_counts[ev.index] for ev in ended)


def test_a_row_that_ends_early_stops_streaming_and_does_not_change_the_others(lively, monkeypatch):
    """Make the third token of prompt 0's greedy answer an end-of-turn token: that row ends
    after two tokens, the other rows still write exactly what they write alone."""
    from dpo_engine.generate import RowEnded, stream_generate_batch

    m, t = lively.model, lively.tokenizer
    ids = greedy_ids(lively, PROMPTS[0])
    stop = ids[2]
    assert stop not in ids[:2]
    assert all(stop not in greedy_ids(lively, p) for p in PROMPTS[1:]), "pick another token: another row stops too"
    others = [alone(lively, p).texts[0] for p in PROMPTS[1:]]
    monkeypatch.setattr(m.generation_config, "eos_token_id", [t.eos_token_id, stop])
    events = []
    result = drain(stream_generate_batch(m, t, PROMPTS, GREEDY), events.append)
    assert result.texts[0] == t.decode(ids[:2], skip_special_tokens=True).strip()
    assert result.token_counts[0] == 2 and result.finished[0]
    assert result.texts[1:] == others and result.token_counts[1:] == [12, 12]
    end0 = next(k for k, ev in enumerate(events) if isinstance(ev, RowEnded) and ev.index == 0)
    assert not any(isinstance(ev, TokenEvent) and ev.index == 0 for ev in events[end0:])
    assert any(isinstance(ev, TokenEvent) and ev.index != 0 for ev in events[end0:])  # the others went on


def test_a_row_that_ended_leaves_the_batch(lively, monkeypatch):
    """After prompt 0's row ends at its second token, the decoding forwards run on the other
    two rows only (the prefill runs the three distinct prompts; then 3 rows until it ends)."""
    from dpo_engine.generate import stream_generate_batch

    m, t = lively.model, lively.tokenizer
    stop = greedy_ids(lively, PROMPTS[0])[2]
    monkeypatch.setattr(m.generation_config, "eos_token_id", [t.eos_token_id, stop])
    rows = []
    hook = m.register_forward_pre_hook(lambda _m, _a, kw: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
    try:
        result = drain(stream_generate_batch(m, t, PROMPTS, GREEDY))
    finally:
        hook.remove()
    assert result.token_counts == [2, 12, 12]
    # prefill, then steps for tokens 2..12: tokens 2 and 3 with all 3 rows (row 0 samples its
    # end token at its third), tokens 4..12 with 2
    assert rows == [3, 3, 3] + [2] * 9


def test_rows_stop_at_their_own_context_end(lively, monkeypatch):
    """A long prompt is cut off where its context ends, a short one goes on to the cap."""
    from dpo_engine.generate import encode_prompt, stream_generate_batch

    t = lively.tokenizer
    long_prompt = "x" * 60
    monkeypatch.setattr(lively.model.config, "max_position_embeddings", len(encode_prompt(t, long_prompt)) + 3)
    result = drain(stream_generate_batch(lively.model, t, [long_prompt, "hi"],
                                         GenerationSettings(max_new_tokens=8, temperature=0)))
    assert result.token_counts == [3, 8] and result.finished == [False, False]


def test_batch_needs_a_prompt(tiny_loaded):
    from dpo_engine.generate import stream_generate_batch

    with pytest.raises(ConfigError, match="at least one prompt"):
        drain(stream_generate_batch(tiny_loaded.model, tiny_loaded.tokenizer, [], GREEDY))
