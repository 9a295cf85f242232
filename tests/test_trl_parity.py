"""Parity with TRL's DPOTrainer (trl 1.16) on the tiny model, with a policy that differs
from its reference: token ids, collated tensors, per-pair sequence log-probs and token
counts, and per-pair rewards and losses for sigmoid, ipo, hinge and robust.

TRL's own code computes every expected number here: its dataset preparation, its
collator, its fused log-prob head (`compute_ref_log_probs`) and its `_compute_loss` run
on one pair at a time (its per-pair loss is the batch mean of a batch of one).
"""

import pytest
import torch

from dpo_engine.encoding import collate, encode_pairs
from dpo_engine.logps import batch_logps
from dpo_engine.losses import LOSSES, LossParams
from dpo_engine.models import load_model
from dpo_engine.pairs import parse_preference_record
from tests.perturb import perturbed_copy

pytest.importorskip("trl")

pytestmark = pytest.mark.numerical  # floating-point results: also run under other CPU kernels


MAX_LENGTH = 96  # the long pair below is truncated, the very long prompt is dropped
BETA = 0.2
SMOOTHING = 0.2


def conv(prompt, chosen, rejected):
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


RECORDS = [
    conv("Hi", "Hello there!", "Go away."),
    conv("What is 2+2?", "4", "It is probably five, or six, who can say really."),
    conv("Name a colour.", "Red " * 20, "No."),  # chosen cut at MAX_LENGTH
    conv("Why? " * 20, "Because.", "No reason."),  # prompt longer than MAX_LENGTH: dropped by both
    conv("Say yes.", "Yes.", "Yes!"),
]
PLAIN = [
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green, obviously."},
    {"prompt": "1, 2, 3,", "chosen": " 4", "rejected": " 7<|im_end|>"},
]


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory):
    policy_dir = perturbed_copy(tiny_model_dir, tmp_path_factory.mktemp("parity-policy"), scale=0.1)
    return str(policy_dir), str(tiny_model_dir)


def make_trainer(models, records, tmp_path_factory):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    policy_dir, ref_dir = models
    args = DPOConfig(output_dir=str(tmp_path_factory.mktemp("trl")), report_to=[], max_length=MAX_LENGTH,
                     beta=BETA, label_smoothing=SMOOTHING, use_cpu=True,
                     bf16=False)  # TRL's default is bf16 autocast, even on a CPU; we compare fp32 to fp32
    return DPOTrainer(model=AutoModelForCausalLM.from_pretrained(policy_dir),
                      ref_model=AutoModelForCausalLM.from_pretrained(ref_dir), args=args,
                      train_dataset=Dataset.from_list(records),
                      processing_class=AutoTokenizer.from_pretrained(ref_dir))


def ours(models, records):
    policy, ref = load_model(models[0]), load_model(models[1])
    kept, skipped = encode_pairs(policy.tokenizer, [parse_preference_record(r) for r in records], MAX_LENGTH)
    batch = collate([e for _, e in kept], policy.tokenizer.pad_token_id)
    with torch.no_grad():
        return kept, skipped, batch, batch_logps(policy.model, batch), batch_logps(ref.model, batch)


def trl_logps(trainer, batch):
    with torch.no_grad():
        pc, pr = trainer.compute_ref_log_probs(trainer.model, batch)
        rc, rr = trainer.compute_ref_log_probs(trainer.ref_model, batch)
    return pc, pr, rc, rr


@pytest.fixture(scope="module")
def conv_case(models, tmp_path_factory):
    trainer = make_trainer(models, RECORDS, tmp_path_factory)
    return trainer, ours(models, RECORDS)


def test_same_pairs_same_token_ids(conv_case):
    trainer, (kept, skipped, _, _, _) = conv_case
    assert [i for i, _ in kept] == [0, 1, 2, 4] and [i for i, _ in skipped] == [3]
    rows = list(trainer.train_dataset)
    assert len(rows) == len(kept)
    for row, (_, enc) in zip(rows, kept):
        room = MAX_LENGTH - len(enc.prompt_ids)
        assert enc.truncated == (max(len(row["chosen_ids"]), len(row["rejected_ids"])) > room)
        assert list(enc.prompt_ids) == row["prompt_ids"]
        assert list(enc.chosen_ids) == row["chosen_ids"][:room]  # TRL's collator cuts; we cut at encoding
        assert list(enc.rejected_ids) == row["rejected_ids"][:room]
    assert kept[2][1].truncated and not kept[0][1].truncated


def test_same_collated_tensors(conv_case):
    trainer, (_, _, batch, _, _) = conv_case
    theirs = trainer.data_collator(list(trainer.train_dataset))
    assert torch.equal(batch.input_ids, theirs["input_ids"])
    assert torch.equal(batch.attention_mask, theirs["attention_mask"])
    assert torch.equal(batch.response_mask.long(), theirs["completion_mask"])


def test_same_sequence_logps_and_token_counts(conv_case):
    trainer, (_, _, batch, pol, ref) = conv_case
    theirs = trl_logps(trainer, trainer.data_collator(list(trainer.train_dataset)))
    for mine, trl in zip((pol.chosen_logps, pol.rejected_logps, ref.chosen_logps, ref.rejected_logps), theirs):
        torch.testing.assert_close(mine, trl, rtol=2e-5, atol=0)
    assert not torch.allclose(pol.chosen_logps, ref.chosen_logps)  # the policy really differs
    mask = trainer.data_collator(list(trainer.train_dataset))["completion_mask"].sum(1)
    assert torch.equal(torch.cat([pol.chosen_tokens, pol.rejected_tokens]), mask)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "robust"])
def test_same_per_pair_rewards_and_losses(conv_case, loss_type):
    trainer, (_, _, _, pol, ref) = conv_case
    trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
    mine = LOSSES[loss_type](pol.chosen_logps, pol.rejected_logps, ref.chosen_logps, ref.rejected_logps,
                             chosen_tokens=pol.chosen_tokens, rejected_tokens=pol.rejected_tokens,
                             params=LossParams(beta=BETA, label_smoothing=SMOOTHING))
    mode = "train" if trainer.model.training else "eval"
    for i, row in enumerate(trainer.train_dataset):
        with torch.no_grad():
            loss = trainer._compute_loss(trainer.model, trainer.data_collator([row]), return_outputs=False)
        metrics = trainer._metrics[mode]
        assert mine.losses[i].item() == pytest.approx(loss.item(), abs=5e-5, rel=5e-5)
        assert mine.chosen_rewards[i].item() == pytest.approx(metrics["rewards/chosen"][-1], abs=5e-5)
        assert mine.rejected_rewards[i].item() == pytest.approx(metrics["rewards/rejected"][-1], abs=5e-5)


def test_plain_text_pairs_match(models, tmp_path_factory):
    trainer = make_trainer(models, PLAIN, tmp_path_factory)
    kept, _, batch, pol, ref = ours(models, PLAIN)
    theirs = trainer.data_collator(list(trainer.train_dataset))
    assert torch.equal(batch.input_ids, theirs["input_ids"])
    assert torch.equal(batch.response_mask.long(), theirs["completion_mask"])
    torch.testing.assert_close(pol.rejected_logps, trl_logps(trainer, theirs)[1], rtol=2e-5, atol=0)


SMOL_RECORDS = [
    conv("What is the capital of France?", "The capital of France is Paris.", "France is a country in Europe."),
    conv("Give me a synonym for happy.", "Joyful.", "Sad is the opposite, and I do not know any synonyms."),
    conv("The opposite of hot is", "Cold.", "A question I cannot answer."),
]


@pytest.mark.integration
def test_eval_cli_matches_trl_on_smollm2(tmp_path_factory):
    """The issue's bar on the real default model, policy != reference: logps within 2e-5
    relative, rewards and losses within 5e-4, token counts exact, for the four losses.
    (Plain-text pairs are compared with TRL on the tiny model above.)"""
    records = SMOL_RECORDS
    import json

    from click.testing import CliRunner

    from dpo_engine.cli.main import main
    from dpo_engine.models import default_model_dir, prepare_default_model

    prepare_default_model()
    base = default_model_dir()
    policy = perturbed_copy(base, tmp_path_factory.mktemp("smol-policy"), scale=0.002)
    data = tmp_path_factory.mktemp("smol-data") / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    trainer = make_trainer((str(policy), str(base)), records, tmp_path_factory)
    batch = trainer.data_collator(list(trainer.train_dataset))
    trl_pc, trl_pr, trl_rc, trl_rr = trl_logps(trainer, batch)
    counts = batch["completion_mask"].sum(1).tolist()
    mode = "train" if trainer.model.training else "eval"
    result = CliRunner().invoke(main, ["eval", "--data", str(data), "--policy", str(policy), "--reference", str(base),
                                       "--beta", str(BETA), "--max-length", str(MAX_LENGTH), "--json"])
    assert result.exit_code == 0, result.output
    pairs = json.loads(result.stdout)["pairs"]
    got = torch.tensor([[p["policy_chosen_logps"], p["policy_rejected_logps"], p["reference_chosen_logps"],
                         p["reference_rejected_logps"]] for p in pairs])
    torch.testing.assert_close(got, torch.stack([trl_pc, trl_pr, trl_rc, trl_rr], 1), rtol=2e-5, atol=0)
    assert [p["chosen_tokens"] for p in pairs] + [p["rejected_tokens"] for p in pairs] == counts
    # The CLI's per-pair loss is LOSSES[name] of these numbers (checked on the tiny model in
    # test_eval_cli); one CLI run serves all four losses, since a model run is the slow part here.
    tokens = dict(chosen_tokens=torch.tensor(counts[: len(pairs)]), rejected_tokens=torch.tensor(counts[len(pairs):]))
    for loss_type in ["sigmoid", "ipo", "hinge", "robust"]:
        mine = LOSSES[loss_type](*got.T.to(torch.float32), **tokens,
                                 params=LossParams(beta=BETA, label_smoothing=SMOOTHING))
        if loss_type == "sigmoid":
            assert [p["loss"] for p in pairs] == pytest.approx(mine.losses.tolist(), abs=1e-6)
        trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
        trainer.precompute_ref_logps = True  # TRL's own precomputed-reference path: half the forwards
        for i, row in enumerate(trainer.train_dataset):
            inputs = dict(trainer.data_collator([row]), ref_chosen_logps=trl_rc[i : i + 1],
                          ref_rejected_logps=trl_rr[i : i + 1])
            with torch.no_grad():
                loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
            metrics = trainer._metrics[mode]
            assert mine.losses[i].item() == pytest.approx(loss.item(), abs=5e-4)
            assert mine.chosen_rewards[i].item() == pytest.approx(metrics["rewards/chosen"][-1], abs=5e-4)
            assert mine.rejected_rewards[i].item() == pytest.approx(metrics["rewards/rejected"][-1], abs=5e-4)
    assert any(abs(p["chosen_reward"]) > 1e-3 for p in pairs)  # the policy really differs from its reference
