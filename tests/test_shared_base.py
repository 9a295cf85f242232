"""A LoRA run's checkpoint served as a view over its base (`dpo_engine.adapters`, `ModelCache`):
one copy of the base in each precision, the base computing exactly as loaded alone, the checkpoint
as its merged model does (to float rounding), in any order of requests.

The checkpoints are real: the trainer's LoRA run over the tiny model, saved merged (the window's
runs: merged model at the top, adapter in adapter/) and as the adapter alone (the CLI's default).
"""

import os
import shutil

import pytest
import torch

import app.plumbing.context as context
from app.plumbing.context import ModelCache
from dpo_engine.adapters import lora_checkpoint, model_identity
from dpo_engine.devices import pick_device
from dpo_engine.encoding import collate, encode_pair
from dpo_engine.export.source import find_source, load_merged_model
from dpo_engine.generate import GenerationSettings, generate
from dpo_engine.heldout import implicit_rewards
from dpo_engine.logps import batch_logps
from dpo_engine.models import load_model
from dpo_engine.pairs import conversation
from tests.lora_run import BF16, adapter_bytes, base_bytes, train_lora_run, weight_bytes

pytestmark = pytest.mark.numerical

PAIR = conversation("Question 3: agree?", "yes yes", "no no no")
GREEDY = GenerationSettings(max_new_tokens=16, temperature=0.0)
FP32 = pick_device("cpu", "float32")


@pytest.fixture(scope="module")
def merged_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-merged")
    return train_lora_run(tiny_model_dir, root / "run", root / "cache", merge=True)


@pytest.fixture(scope="module")
def adapter_run(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-adapter")
    return train_lora_run(tiny_model_dir, root / "run", root / "cache", merge=False)


def logps(loaded) -> torch.Tensor:
    """Summed log-probs of PAIR's chosen and rejected answers under `loaded`: (2,) fp32."""
    batch = collate([encode_pair(loaded.tokenizer, PAIR)], loaded.tokenizer.pad_token_id)
    with torch.no_grad():
        out = batch_logps(loaded.model, batch)
    return torch.cat([out.chosen_logps, out.rejected_logps]).float()


def greedy(loaded) -> str:
    return generate(loaded.model, loaded.tokenizer, "Question 3: agree?", 1, GREEDY).texts[0]


def test_requests_in_any_order_get_the_base_exactly_and_the_checkpoint_as_merged(tiny_model_dir, merged_run):
    base_alone, merged_alone = load_model(str(tiny_model_dir), FP32), load_model(str(merged_run), FP32)
    want = {"base": (logps(base_alone), greedy(base_alone)), "ckpt": (logps(merged_alone), greedy(merged_alone))}
    assert (want["base"][0] - want["ckpt"][0]).abs().min() > 1  # the run moved the model: a mix-up would show
    assert want["base"][1] != want["ckpt"][1]
    cache = ModelCache(FP32)
    refs = {"base": str(tiny_model_dir), "ckpt": str(merged_run)}
    for which in ("ckpt", "base", "ckpt", "base", "ckpt"):  # the checkpoint first: it loads the base itself
        served = cache.get(refs[which])
        got_logps, got_text = logps(served), greedy(served)
        if which == "base":
            assert torch.equal(got_logps, want["base"][0]) and got_text == want["base"][1]
        else:  # unmerged W·x + s·B·A·x against the merged weights: float rounding only
            torch.testing.assert_close(got_logps, want["ckpt"][0], rtol=1e-5, atol=0)
            assert got_text == want["ckpt"][1]
    # both at once, as Compare's implicit rewards take them: nothing to switch between the two forwards
    view, base = cache.get(refs["ckpt"]), cache.get(refs["base"])
    flags = [p.requires_grad for p in base.model.parameters()]
    assert flags == [p.requires_grad for p in base_alone.model.parameters()]  # peft's freezing undone on the base
    got = implicit_rewards(view.model, base.model, view.tokenizer, "Question 3: agree?", ("yes", "no no"))
    expected = implicit_rewards(merged_alone.model, base_alone.model, merged_alone.tokenizer, "Question 3: agree?",
                                ("yes", "no no"))
    assert got.reference_logps == expected.reference_logps
    torch.testing.assert_close(torch.tensor(got.policy_logps), torch.tensor(expected.policy_logps), rtol=1e-5, atol=0)


def test_one_copy_of_the_base_in_the_window_and_in_the_scoring_precision(tiny_model_dir, merged_run):
    cache = ModelCache(BF16)  # bf16 for sampling, fp32 copies for the scores, as "auto" does on such a CPU
    base, view = cache.get(str(tiny_model_dir)), cache.get(str(merged_run))
    scored_view, scored_base = cache.scoring_models(str(merged_run), str(tiny_model_dir))
    assert cache.scoring_choice.dtype == "float32"
    for shared, over in ((view, base), (scored_view, scored_base)):
        base_tensors = {p.data_ptr() for p in over.model.parameters()}
        mine = {p.data_ptr() for n, p in shared.model.named_parameters() if "lora_" not in n}
        assert mine == base_tensors  # the view's weights are the base's own tensors
        assert {p.dtype for n, p in shared.model.named_parameters() if "lora_" in n} == {torch.float32}
    assert next(base.model.parameters()).dtype == torch.bfloat16
    assert next(scored_base.model.parameters()).dtype == torch.float32
    one_each = (base_bytes(base.model, torch.bfloat16) + base_bytes(base.model, torch.float32)
                + adapter_bytes(view.model) + adapter_bytes(scored_view.model))
    assert weight_bytes(base.model, view.model, scored_base.model, scored_view.model) == one_each
    assert cache.held_bytes() == one_each  # and the cache holds nothing else
    # the bf16 base is the base loaded alone in bf16, exactly; the view is the merged model in bf16 to
    # bf16 rounding (measured 5e-5 relative: the view adds the fp32 adapter's product to the bf16 base's,
    # the merged model rounds base + adapter to bf16 first)
    assert torch.equal(logps(base), logps(load_model(str(tiny_model_dir), BF16)))
    torch.testing.assert_close(logps(view), logps(load_model(str(merged_run), BF16)), rtol=1e-3, atol=0)
    torch.testing.assert_close(logps(scored_view), logps(load_model(str(merged_run), FP32)), rtol=1e-5, atol=0)


def test_an_adapter_only_checkpoint_is_served_over_its_base(tiny_model_dir, adapter_run):
    assert not (adapter_run / "model.safetensors").exists() and (adapter_run / "adapter_model.safetensors").is_file()
    cache = ModelCache(FP32)
    base, view = cache.get(str(tiny_model_dir)), cache.get(str(adapter_run))
    assert cache.held_bytes() == base_bytes(base.model, torch.float32) + adapter_bytes(view.model)
    merged = load_merged_model(find_source(str(adapter_run)))  # the export's merge, in fp32
    torch.testing.assert_close(logps(view), logps(type(view)(merged, view.tokenizer, view.resolved, FP32, 0)),
                               rtol=1e-5, atol=0)


def test_the_fit_check_counts_a_shared_base_once(tiny_model_dir, merged_run, adapter_run, tmp_path, monkeypatch):
    asked = []
    real = context.plan_run
    monkeypatch.setattr(context, "plan_run", lambda **kw: asked.append(kw.get("parameters")) or real(**kw))
    cache = ModelCache(BF16)
    base, view = cache.get(str(tiny_model_dir)), cache.get(str(merged_run))
    n_base = sum(p.numel() for p in base.model.parameters())
    n_adapter = adapter_bytes(view.model) // 4  # fp32 adapter
    cache.scoring_models(str(merged_run), str(tiny_model_dir))
    assert asked[-1] == n_base + n_adapter  # not two models' worth
    other = cache.get(str(adapter_run))  # another checkpoint of the same base: its fp32 copy adds its adapter
    cache.scoring_models(str(adapter_run), str(tiny_model_dir))
    assert asked[-1] == adapter_bytes(other.model) // 4
    copy = shutil.copytree(tiny_model_dir, tmp_path / "full-copy")  # two full models: both count
    cache.drop(str(tiny_model_dir))
    cache.scoring_models(str(copy), str(tiny_model_dir))
    assert asked[-1] == 2 * n_base


def test_what_is_not_a_lora_checkpoint_over_a_base_here_loads_as_before(tiny_model_dir, merged_run, tmp_path):
    merged_only = shutil.copytree(merged_run, tmp_path / "merged-only", ignore=shutil.ignore_patterns("adapter"))
    moved_base = shutil.copytree(merged_run, tmp_path / "moved-base")
    info = (moved_base / "dpo_studio_run.json").read_text().replace(str(tiny_model_dir), str(tmp_path / "gone"))
    (moved_base / "dpo_studio_run.json").write_text(info)
    assert lora_checkpoint(str(tiny_model_dir)) is None and lora_checkpoint(str(merged_run)) is not None
    cache = ModelCache(FP32)
    base = cache.get(str(tiny_model_dir))
    for folder in (merged_only, moved_base):  # no adapter / a base not on this disk: the folder's own weights
        assert lora_checkpoint(str(folder)) is None
        own = cache.get(str(folder))
        assert not {p.data_ptr() for p in own.model.parameters()} & {p.data_ptr() for p in base.model.parameters()}
        torch.testing.assert_close(logps(own), logps(load_model(str(merged_run), FP32)), rtol=1e-5, atol=0)


def test_a_rewritten_adapter_is_read_again_and_the_base_kept(tiny_model_dir, merged_run):
    cache = ModelCache(FP32)
    base, view = cache.get(str(tiny_model_dir)), cache.get(str(merged_run))
    weights = merged_run / "adapter" / "adapter_model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a resumed run saved it again
    assert cache.get(str(merged_run)) is not view and cache.get(str(tiny_model_dir)) is base


def test_a_run_file_s_base_finds_the_model_under_another_spelling(tiny_model_dir, merged_run, tmp_path, monkeypatch):
    link = tmp_path / "base-link"
    link.symlink_to(tiny_model_dir)
    assert model_identity(str(link)) == model_identity(str(tiny_model_dir)) == str(tiny_model_dir.resolve())
    cache = ModelCache(FP32)
    base = cache.get(str(link))
    cache.get(str(merged_run))  # its run file names the base by its real path
    assert cache.held_bytes() == base_bytes(base.model, torch.float32) + adapter_bytes(cache.get(str(merged_run)).model)
    monkeypatch.setenv("DPO_STUDIO_CACHE", str(tmp_path / "cache"))
    default_folder = tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct"
    default_folder.mkdir(parents=True)
    assert model_identity(str(default_folder)) == model_identity("default") == "default"



def test_a_checkpoint_over_another_lora_checkpoint_loads_as_before(merged_run, tmp_path):
    """No view over a view: a run trained from a LoRA checkpoint (here two hand-edited run files naming
    each other: a cycle) loads its own weights."""
    import json

    first, second = (shutil.copytree(merged_run, tmp_path / name) for name in ("first", "second"))
    for folder, other in ((first, second), (second, first)):
        info = json.loads((folder / "dpo_studio_run.json").read_text())
        info["base"] = info["base_model"] = str(other)
        (folder / "dpo_studio_run.json").write_text(json.dumps(info))
    assert lora_checkpoint(str(first)) is None and lora_checkpoint(str(second)) is None
    own = ModelCache(FP32).get(str(first))
    torch.testing.assert_close(logps(own), logps(load_model(str(merged_run), FP32)), rtol=1e-5, atol=0)
