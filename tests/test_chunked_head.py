"""The LM head in chunks (`logps.label_logps`): the same log-probs and the same gradients as
the plain head (all logits at once), in fp32 to 1e-6 relative, on a tied-embedding family
(Llama 3), an untied one (Mistral) and a soft-capped one (Gemma 2), through both scoring
paths (the concatenated forward and the shared-prompt pass); and no chunk ever holds more
tokens than asked, in the forward or in the recomputing backward."""

import pytest
import torch

from dpo_engine import logps
from dpo_engine.encoding import collate, encode_pair
from dpo_engine.logps import _causal_lm, _chunk_logps, batch_logps, label_logps
from dpo_engine.pairs import PreferencePair, conversation
from dpo_engine.shared_prompt import shared_prompt_logps
from tests.tiny_families import FAMILIES, build_family_model, build_family_tokenizer

PAIRS = [
    conversation("Hi", "Hello there, friend.", "Go away"),
    conversation("What is 2+2? Answer briefly.", "4", "It is five, I think, or maybe six."),
    PreferencePair("The sky is", " blue.", " made of cheese and very loud."),
]
CHUNK = 3  # tokens per chunk: every batch here has dozens of scored tokens, so many chunks


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-6) -> bool:
    """|a - b| <= rel x the largest |b| (elementwise rtol would fail on entries near zero)."""
    return bool((a - b).abs().max() <= rel * b.abs().max())


def lora_model(name: str, folder):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    build_family_model(name, folder)
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                                             target_modules=["q_proj", "v_proj", "down_proj"]))
    _causal_lm(model).get_output_embeddings().weight.requires_grad_(True)  # the head (or tied embedding) trains too
    return model.eval(), build_family_tokenizer(FAMILIES[name])


@pytest.fixture(scope="module", params=["llama3", "mistral", "gemma2"])
def family_model(request, tmp_path_factory):
    model, tok = lora_model(request.param, tmp_path_factory.mktemp(request.param))
    assert _causal_lm(model).config.tie_word_embeddings == (request.param != "mistral")
    return model, tok


def scores_and_grads(model, tok, path: str):
    encoded = [encode_pair(tok, p) for p in PAIRS]
    model.zero_grad(set_to_none=True)
    if path == "concatenated":
        lp = batch_logps(model, collate(encoded, tok.pad_token_id))
    else:
        lp = shared_prompt_logps(model, encoded, tok.pad_token_id)
    values = torch.cat([lp.chosen_logps, lp.rejected_logps])
    (values * torch.linspace(0.5, 2.0, len(values))).sum().backward()  # unequal weights: rows not interchangeable
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return values.detach(), grads


@pytest.mark.parametrize("path", ["concatenated", "shared-prompt"])
def test_chunked_equals_plain_values_and_gradients(family_model, path, monkeypatch):
    model, tok = family_model
    vocab = _causal_lm(model).config.vocab_size
    plain_values, plain_grads = scores_and_grads(model, tok, path)  # the default budgets: all at once here
    monkeypatch.setattr(logps, "HEAD_WHOLE_BYTES", CHUNK * 4 * vocab)  # more logits than this: chunks
    monkeypatch.setattr(logps, "HEAD_CHUNK_BYTES", CHUNK * 4 * vocab)
    calls = []
    hook = _causal_lm(model).get_output_embeddings().register_forward_hook(
        lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        values, grads = scores_and_grads(model, tok, path)
    finally:
        hook.remove()
    n_scored = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in (encode_pair(tok, q) for q in PAIRS))
    assert max(calls) == CHUNK and sum(calls) == 2 * n_scored  # each chunk once forward, once recomputed
    assert close(values, plain_values)
    lora = [n for n in grads if "lora_" in n]
    head = [n for n in grads if "lora_" not in n]
    assert len(lora) >= 4 and len(head) == 1, list(grads)
    for name in grads:
        assert grads[name].abs().max() > 0, name
        assert close(grads[name], plain_grads[name]), name


def test_hidden_state_gradients_match_and_no_grad_needs_no_graph(family_model):
    model, _ = family_model
    lm = _causal_lm(model)
    torch.manual_seed(0)
    hidden = torch.randn(50, lm.config.hidden_size, requires_grad=True)
    targets = torch.randint(0, lm.config.vocab_size, (50,))
    weights = torch.rand(50)
    plain = _chunk_logps(lm, hidden, targets)
    (g_plain,) = torch.autograd.grad((plain * weights).sum(), hidden)
    chunked = label_logps(lm, hidden, targets, chunk_tokens=7)
    (g_chunked,) = torch.autograd.grad((chunked * weights).sum(), hidden)
    assert chunked.dtype == torch.float32 and chunked.shape == (50,)
    assert close(chunked, plain) and close(g_chunked, g_plain)
    with torch.no_grad():
        assert close(label_logps(lm, hidden, targets, chunk_tokens=7), plain)


def test_bf16_autocast_keeps_the_log_softmax_fp32(family_model):
    """Under bf16 autocast the head's matmul is bf16 in both paths and the log-softmax fp32:
    chunked and plain agree to the rounding of a bf16 matmul, not of a bf16 logsumexp."""
    model, _ = family_model
    lm = _causal_lm(model)
    torch.manual_seed(0)
    hidden = torch.randn(40, lm.config.hidden_size)
    targets = torch.randint(0, lm.config.vocab_size, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = _chunk_logps(lm, hidden, targets)
        chunked = label_logps(lm, hidden, targets, chunk_tokens=6)
    assert plain.dtype == chunked.dtype == torch.float32
    assert close(chunked, plain, rel=1e-6)
