"""Sequence log-probs on the tiny model: against a naive full-vocabulary computation,
batched == alone whatever the padding, the LM head only on response positions, and the
DPO loss gradient in closed form (∂L/∂log π(y_w) = −β·σ(−Δ))."""

import pytest
import torch

from dpo_engine.encoding import collate, encode_pair
from dpo_engine.logps import batch_logps, sequence_logps
from dpo_engine.losses import LossParams, sigmoid
from dpo_engine.pairs import PreferencePair, conversation

pytestmark = pytest.mark.numerical  # floating-point results: also run under other CPU kernels

PAIRS = [
    conversation("Hi", "Hello there, friend.", "Go away"),
    conversation("What is 2+2? Answer briefly.", "4", "It is five, I think, or maybe six."),
    PreferencePair("The sky is", " blue.", " made of cheese and very loud."),
]


@pytest.fixture(scope="module")
def model_tok(tiny_loaded):
    return tiny_loaded.model, tiny_loaded.tokenizer


@pytest.fixture(scope="module")
def encoded(model_tok):
    return [encode_pair(model_tok[1], p) for p in PAIRS]


def naive_logps(model, prompt, response) -> float:
    """Full logits, full log-softmax, shifted gather: the textbook way, one sequence, no padding."""
    ids = torch.tensor([list(prompt) + list(response)])
    logp = model(input_ids=ids).logits[0].float().log_softmax(-1)  # (T, V)
    targets = ids[0, len(prompt):]  # response tokens
    return logp[len(prompt) - 1 : -1].gather(1, targets[:, None]).sum().item()


def test_matches_the_naive_computation(model_tok, encoded):
    model, _ = model_tok
    with torch.no_grad():
        out = batch_logps(model, collate(encoded, pad_id=0))
    for i, e in enumerate(encoded):
        assert out.chosen_logps[i].item() == pytest.approx(naive_logps(model, e.prompt_ids, e.chosen_ids), abs=1e-4)
        expected = naive_logps(model, e.prompt_ids, e.rejected_ids)
        assert out.rejected_logps[i].item() == pytest.approx(expected, abs=1e-4)
    assert out.chosen_tokens.tolist() == [len(e.chosen_ids) for e in encoded]
    assert out.rejected_tokens.tolist() == [len(e.rejected_ids) for e in encoded]
    assert out.chosen_logps.dtype == torch.float32


@pytest.mark.parametrize("pad_id,multiple", [(0, None), (2, 8), (70, 32)])
def test_batched_equals_one_at_a_time_whatever_the_padding(model_tok, encoded, pad_id, multiple):
    model, _ = model_tok
    with torch.no_grad():
        together = batch_logps(model, collate(encoded, pad_id=pad_id, pad_to_multiple_of=multiple))
        alone = [batch_logps(model, collate([e], pad_id=0)) for e in encoded]
    for field in ("chosen_logps", "rejected_logps"):
        one_by_one = torch.cat([getattr(a, field) for a in alone])
        torch.testing.assert_close(getattr(together, field), one_by_one, atol=1e-5, rtol=1e-6)


def test_lm_head_runs_only_on_response_positions(model_tok, encoded):
    model, _ = model_tok
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    try:
        with torch.no_grad():
            batch_logps(model, collate(encoded, pad_id=0, pad_to_multiple_of=64))
    finally:
        hook.remove()
    n_response = sum(len(e.chosen_ids) + len(e.rejected_ids) for e in encoded)
    assert seen == [torch.Size([n_response, model.config.hidden_size])]


def test_shapes_are_checked(model_tok):
    model, _ = model_tok
    ids = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(AssertionError):
        sequence_logps(model, ids, torch.ones(2, 4, dtype=torch.long), torch.zeros(2, 5, dtype=torch.bool))
    first = torch.zeros(2, 5, dtype=torch.bool)
    first[:, 0] = True
    with pytest.raises(AssertionError, match="context"):
        sequence_logps(model, ids, torch.ones(2, 5, dtype=torch.long), first)


def test_loss_gradient_has_the_closed_form(model_tok, encoded):
    """∇L = −β·σ(−Δ)·(∇log π(y_w) − ∇log π(y_l)) for one pair, through the real model."""
    model, _ = model_tok
    params = [p for p in model.parameters() if p.requires_grad]
    batch = collate(encoded[:1], pad_id=0)
    ref_c, ref_r = torch.tensor([-30.0]), torch.tensor([-25.0])
    beta = 0.5

    out = batch_logps(model, batch)
    loss = sigmoid(out.chosen_logps, out.rejected_logps, ref_c, ref_r, params=LossParams(beta=beta)).losses.sum()
    grads = torch.autograd.grad(loss, params)
    out = batch_logps(model, batch)
    g_w = torch.autograd.grad(out.chosen_logps.sum(), params, retain_graph=True)
    g_l = torch.autograd.grad(out.rejected_logps.sum(), params)
    delta = beta * ((out.chosen_logps - ref_c) - (out.rejected_logps - ref_r)).detach()
    coeff = -beta * torch.sigmoid(-delta).item()
    for g, gw, gl in zip(grads, g_w, g_l):
        torch.testing.assert_close(g, coeff * (gw - gl), atol=1e-6, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in grads)


def test_the_one_scoring_loop_keeps_input_order_and_never_leaks_no_grad():
    """`logps.score_pairs` (the reference pass, eval, held-out summaries and `dpo-engine eval`
    all use it): batches by length, returns per-pair values in input order, and the caller
    keeps gradients on between its yields."""
    import torch

    from dpo_engine.encoding import EncodedPair
    from dpo_engine.logps import score_pairs

    pairs = [EncodedPair((1,) * (3 + i % 4), (2,) * (1 + i), (3,)) for i in range(7)]
    seen_grad = []

    def forward(batch):
        seen_grad.append(torch.is_grad_enabled())
        return (torch.tensor([float(len(p.chosen_ids)) for p in batch], requires_grad=False),
                torch.tensor([p.length for p in batch]))

    gen = score_pairs(forward, pairs, batch_size=3)
    done = []
    while True:
        try:
            done.append(next(gen))
        except StopIteration as stop:
            chosen, lengths = stop.value
            break
        assert torch.is_grad_enabled()  # the caller's mode between batches
    assert done == [3, 6, 7] and seen_grad == [False] * 3
    assert chosen.tolist() == [float(1 + i) for i in range(7)] and chosen.dtype == torch.float32
    assert lengths.tolist() == [p.length for p in pairs] and lengths.dtype == torch.long
