"""Chat families: Llama 3, Qwen2, Gemma 2, Mistral and Phi-3 (tiny random models and
templates in their documented turn formats, tests/tiny_families.py). For each: the prompt
renders as the family documents it, the label mask covers exactly the answer tokens (a
property over random answers: conversational and plain, with and without a system prompt,
finished and cut off), generation runs and equals transformers' greedy decoding, two
training steps run and change every weight, and per-pair log-probs equal TRL's."""

import math
import random

import pytest
import torch
from jinja2.exceptions import TemplateError  # the chat template's raise_exception, through transformers
from safetensors.torch import load_file

from dpo_engine.encoding import collate, encode_pair
from dpo_engine.errors import DataError
from dpo_engine.generate import GenerationSettings, encode_prompt, generate
from dpo_engine.pairs import PreferencePair
from tests.tiny_families import FAMILIES, build_family_model, build_family_tokenizer

pytestmark = pytest.mark.numerical  # floating-point results: also run under other CPU kernels


NAMES = sorted(FAMILIES)
RENDERED = {  # the generation prompt for [system "Be brief.",] user "Hi", as each family documents it
    ("llama3", False): "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                       "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ("llama3", True): "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                      "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant"
                      "<|end_header_id|>\n\n",
    ("qwen2", False): "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                      "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    ("qwen2", True): "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    ("gemma2", False): "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    ("mistral", False): "<s>[INST] Hi[/INST]",
    ("mistral", True): "<s>[INST] Be brief.\n\nHi[/INST]",
    ("phi3", False): "<|user|>\nHi<|end|>\n<|assistant|>\n",
    ("phi3", True): "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n",
}


@pytest.fixture(scope="module", params=NAMES)
def family(request):
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def tok(family):
    return build_family_tokenizer(family)


@pytest.fixture(scope="module")
def model_dir(family, tmp_path_factory):
    return build_family_model(family.name, tmp_path_factory.mktemp(family.name))


def prompt_of(system: bool, user: str = "Hi"):
    return ((("system", "Be brief."),) if system else ()) + (("user", user),)


@pytest.mark.parametrize("system", [False, True], ids=["no-system", "system"])
def test_prompt_renders_the_documented_turn_format(family, tok, system):
    messages = [{"role": r, "content": c} for r, c in prompt_of(system)]
    if system and not family.system:
        with pytest.raises(TemplateError, match="System role not supported"):
            encode_prompt(tok, messages)
        return
    assert tok.decode(encode_prompt(tok, messages)) == RENDERED[(family.name, system)]


def random_answer(rng: random.Random) -> str:
    """Letters, digits, punctuation, inner spaces and newlines, a non-ASCII letter; no edge whitespace."""
    alphabet = "abcXYZ019 .,!?\n-é"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))).strip() or "x"


def expected_response(tok, family, answer: str, finished: bool, conversational: bool, system: bool) -> list[str]:
    if not conversational:
        return tok.tokenize(answer) + ([tok.eos_token] if finished else [])
    # Mistral v0.3 drops the system prompt once an answer follows, so the generation prompt is no
    # prefix of the finished conversation; its own prompt is used, and that ends with the space
    # the template puts before every answer (a token of its own in the byte tokenizer)
    lead = "" if system and family.name == "mistral" else family.lead
    return tok.tokenize(lead + answer) + (list(family.end) if finished else [])


def scored_tokens(tok, enc, row: int) -> list[str]:
    """The tokens under the collated label mask of one row (0 = chosen, 1 = rejected)."""
    batch = collate([enc], tok.pad_token_id)
    return tok.convert_ids_to_tokens(batch.input_ids[row][batch.response_mask[row]].tolist())


@pytest.mark.parametrize("system", [False, True], ids=["no-system", "system"])
def test_label_mask_covers_exactly_the_answer_tokens(family, tok, system):
    rng = random.Random(hash((family.name, system)) % 1000)
    for case in range(40):
        chosen, rejected = random_answer(rng), random_answer(rng)
        if chosen == rejected:
            continue
        conversational = case % 4 != 3  # every fourth case a plain-text pair
        finished = (case % 3 != 1, case % 3 != 2)  # both, winner cut off, loser cut off
        prompt = prompt_of(system, f"Q{case}: {random_answer(rng)}") if conversational else f"Q{case}:"
        pair = PreferencePair(prompt, chosen, rejected, *finished)
        if conversational and system and not family.system:
            with pytest.raises(DataError, match="chat template refused"):
                encode_pair(tok, pair)
            continue
        enc = encode_pair(tok, pair)
        for row, (answer, done) in enumerate([(chosen, finished[0]), (rejected, finished[1])]):
            want = expected_response(tok, family, answer, done, conversational, system)
            assert scored_tokens(tok, enc, row) == want, (family.name, case, answer, done)
        if conversational and all(finished):  # nothing lost or added at the seam
            full = tok.apply_chat_template([*pair.messages, {"role": "assistant", "content": chosen}],
                                           tokenize=True, return_dict=True)["input_ids"]
            assert list(enc.prompt_ids + enc.chosen_ids) == list(full)


def test_generate_matches_greedy_transformers(family, model_dir):
    from dpo_engine.devices import pick_device
    from dpo_engine.models import load_model

    loaded = load_model(str(model_dir), pick_device("cpu"))
    m, t = loaded.model, loaded.tokenizer
    sampled = generate(m, t, "Hi", n=2, settings=GenerationSettings(max_new_tokens=6, temperature=1.0, seed=1))
    assert len(sampled.texts) == 2 and all(0 < n <= 6 for n in sampled.token_counts)
    ours = generate(m, t, "Hi", n=1, settings=GenerationSettings(max_new_tokens=8, temperature=0))
    ids = torch.tensor([encode_prompt(t, "Hi")])
    ref = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                     pad_token_id=t.pad_token_id)[0, ids.shape[1]:].tolist()
    stops = set(m.generation_config.eos_token_id)
    assert t.convert_tokens_to_ids(family.end_of_turn) in stops  # generation ends at the end of a turn
    new = ref[: next((i for i, x in enumerate(ref) if x in stops), len(ref))]
    assert ours.texts[0] == t.decode(new, skip_special_tokens=True).strip()


def test_two_training_steps_change_every_weight(family, model_dir, tmp_path, monkeypatch):
    from dpo_engine.train.config import TrainConfig
    from dpo_engine.train.events import StepEvent, TrainSummary
    from dpo_engine.train.loop import train

    monkeypatch.setenv("DPO_STUDIO_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    pairs = [PreferencePair(prompt_of(family.system and i % 2 == 0, f"Agree {i}?"), "yes " * rng.randint(1, 3),
                            "no " * rng.randint(1, 3)) for i in range(8)]
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), model=str(model_dir), lr=1e-3, batch_size=4, grad_accum=1,
                      max_steps=2, warmup_ratio=0.0, eval_fraction=0.0, device="cpu", seed=3)
    events = list(train(cfg, pairs))
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert isinstance(events[-1], TrainSummary) and events[-1].status == "finished"
    assert [s.step for s in steps] == [1, 2]
    assert steps[0].loss == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step 1
    assert all(math.isfinite(s.loss) for s in steps)
    before = load_file(str(model_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert before.keys() == after.keys()
    assert [k for k in before if torch.equal(before[k], after[k])] == []


def test_token_ids_and_sequence_logps_equal_trls(family, model_dir, tmp_path_factory):
    """TRL's DPOTrainer (its dataset preparation, collator and log-prob head) on the same pairs,
    with a policy that differs from its reference: the same ids, masks and per-pair log-probs."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from dpo_engine.encoding import encode_pairs
    from dpo_engine.logps import batch_logps
    from dpo_engine.pairs import parse_preference_record
    from tests.perturb import perturbed_copy

    policy_dir = perturbed_copy(model_dir, tmp_path_factory.mktemp(f"{family.name}-policy"), scale=0.1)
    system = [{"role": "system", "content": "Be brief."}] if family.system and family.name != "mistral" else []
    records = [{"prompt": system + [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": c}],
                "rejected": [{"role": "assistant", "content": r}]}
               for q, c, r in [("Hi", "Hello there!", "Go away."), ("2+2?", "4", "Five, or six."),
                               ("Colour?", "Red, like a fire engine.", "No.")]]
    args = DPOConfig(output_dir=str(tmp_path_factory.mktemp("trl")), report_to=[], max_length=256, use_cpu=True,
                     bf16=False)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(policy_dir),
                         ref_model=AutoModelForCausalLM.from_pretrained(model_dir), args=args,
                         train_dataset=Dataset.from_list(records),
                         processing_class=AutoTokenizer.from_pretrained(model_dir))
    tok = AutoTokenizer.from_pretrained(model_dir)
    kept, skipped = encode_pairs(tok, [parse_preference_record(r) for r in records], 256)
    assert not skipped
    for row, (_, enc) in zip(trainer.train_dataset, kept):
        assert (list(enc.prompt_ids), list(enc.chosen_ids), list(enc.rejected_ids)) == (
            row["prompt_ids"], row["chosen_ids"], row["rejected_ids"])
    theirs = trainer.data_collator(list(trainer.train_dataset))
    batch = collate([e for _, e in kept], tok.pad_token_id)
    assert torch.equal(batch.input_ids, theirs["input_ids"])
    assert torch.equal(batch.response_mask.long(), theirs["completion_mask"])
    with torch.no_grad():
        ours = batch_logps(AutoModelForCausalLM.from_pretrained(policy_dir), batch)
        trl_chosen, trl_rejected = trainer.compute_ref_log_probs(trainer.model, theirs)
    torch.testing.assert_close(ours.chosen_logps, trl_chosen, rtol=2e-5, atol=1e-5)
    torch.testing.assert_close(ours.rejected_logps, trl_rejected, rtol=2e-5, atol=1e-5)
