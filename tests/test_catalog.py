"""The model catalog on fixture stores built from tiny files (tests/model_stores.py): a Hugging
Face cache, an Ollama store, a folder of .gguf files with broken ones; exact parameter counts,
the fit estimate worked out by hand, and `dpo-engine models --json` in-process."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dpo_engine.catalog import list_models
from dpo_engine.catalog.fit import FULL_FITS, LORA_ONLY, TOO_LARGE, ModelShape, fit_verdict
from dpo_engine.catalog.sources import Locations
from dpo_engine.catalog import fit as fit_mod
from dpo_engine.catalog.gguf_header import read_gguf
from dpo_engine.catalog.readers import read_folder, read_gguf_file, safetensors_header
from dpo_engine.catalog.sources import inspect_path
from dpo_engine.cli.main import main
from tests.model_stores import (build_gguf_folder, build_hf_cache, build_ollama_store, gguf_param_count,
                                hf_model_files, write_gguf, write_hf_repo)

GiB = 2**30


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    params = {}
    params.update(build_hf_cache(root / "hf"))
    params.update(build_ollama_store(root / "ollama", root / "scratch"))
    params.update(build_gguf_folder(root / "ggufs"))
    return root, params


def catalog_of(root, free=64 * GiB, device="cpu", **kw):
    loc = Locations(root / "hf", root / "ollama", (root / "lmstudio",))
    return list_models(folders=[root / "ggufs"], device=device, locations=loc, free_bytes=free,
                       include_default=False, **kw)


def by_name(catalog):
    return {e.name: e for e in catalog.entries}


# --------------------------------------------------------------------------- the stores


def test_every_fixture_model_is_listed_with_its_exact_parameter_count(stores):
    root, params = stores
    entries = by_name(catalog_of(root))
    for name, n in params.items():
        assert entries[name].usable, (name, entries[name].error)
        assert entries[name].parameters == n and not entries[name].parameters_estimated
    assert [e.source for e in entries.values() if e.name in params].count("ollama") == 2
    assert "mmproj-vision.gguf" not in entries  # a vision projector beside a model is not a model


def test_hf_cache_entries_read_config_safetensors_tokenizer_and_card(stores):
    root, _ = stores
    entries = by_name(catalog_of(root))
    chat = entries["tiny-org/tiny-qwen2-chat"]
    assert (chat.source, chat.format, chat.family, chat.precision) == ("hf-cache", "safetensors", "qwen2", "bfloat16")
    assert chat.chat_template is True and chat.gated is None
    assert chat.path.endswith("snapshots/" + "a" * 40)  # what load_model is given: the snapshot folder
    blobs = sum(p.stat().st_size for p in (root / "hf" / "models--tiny-org--tiny-qwen2-chat" / "blobs").iterdir())
    assert chat.size_bytes == blobs
    base = entries["tiny-org/tiny-gemma2-base"]
    assert base.family == "gemma2" and base.precision == "float32" and base.chat_template is False
    assert base.license == "tiny-community-license"
    assert "You agree to the Tiny Community License" in base.gated
    assert any("plain-text mode" in n for n in base.notes)
    gguf = entries["tiny-org/tiny-GGUF/tiny-q8.gguf"]
    assert (gguf.format, gguf.family, gguf.precision) == ("gguf", "qwen2", "Q8_0")  # from the tensors: no file type


def test_damaged_hf_repo_is_an_entry_with_the_reason(stores):
    root, _ = stores
    damaged = by_name(catalog_of(root))["tiny-org/damaged"]
    assert not damaged.usable and "missing commit" in damaged.error and damaged.fit is None


def test_ollama_manifests_name_gguf_blobs(stores):
    root, _ = stores
    entries = by_name(catalog_of(root))
    tiny = entries["tiny:latest"]  # registry.ollama.ai/library/ dropped, as `ollama list` shows it
    assert tiny.path.startswith(str(root / "ollama" / "blobs" / "sha256-")) and tiny.format == "gguf"
    assert (tiny.family, tiny.precision, tiny.chat_template, tiny.license) == ("llama", "F32", True, "TINY LICENSE 1.0")
    base = entries["someone/tiny-base:q8"]
    assert base.family == "qwen2" and base.chat_template is False and base.precision == "Q8_0"
    gone = entries["gone:latest"]
    assert not gone.usable and "blob is missing" in gone.error


def test_broken_gguf_files_are_shown_with_a_reason_not_a_crash(stores):
    root, _ = stores
    entries = by_name(catalog_of(root))
    assert "cut off" in entries["cut.gguf"].error and entries["cut.gguf"].size_bytes > 0
    assert "not a GGUF file" in entries["random.gguf"].error
    assert entries["empty.gguf"].error == "the file is empty"
    assert entries["good.gguf"].family == "mistral" and entries["nested/deeper.gguf"].family == "phi3"


def test_lm_studio_folder_and_dedupe(stores, tmp_path):
    lms = tmp_path / "lmstudio"
    (lms / "pub" / "model").mkdir(parents=True)
    write_gguf(lms / "pub" / "model" / "m.gguf")
    loc = Locations(None, None, (lms,))
    cat = list_models(folders=[lms, tmp_path / "missing"], locations=loc, free_bytes=GiB, device="cpu",
                      include_default=False, paths=[lms / "pub" / "model" / "m.gguf"])
    names = [(e.name, e.source) for e in cat.entries]
    assert names == [("pub/model/m.gguf", "lm-studio"), ("missing", "folder")]  # found once; the bad folder said so
    assert cat.entries[1].error == "no such folder"


def test_fifty_models_are_listed_and_usable(tmp_path):
    """25 GGUF files with a 32k vocabulary (Llama-2/Mistral size) and 25 HF cache snapshots:
    every one listed once and usable. How long it takes is bench/catalog_listing.py's."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(25):
        write_gguf(folder / f"m{i}.gguf", vocab=32_000)
    files, _ = hf_model_files()
    for i in range(25):
        write_hf_repo(tmp_path / "hf", f"org/m{i}", files)
    loc = Locations(tmp_path / "hf", None, ())
    cat = list_models(folders=[folder], locations=loc, free_bytes=GiB, device="cpu", include_default=False)
    assert len(cat.entries) == 50 and len({e.path for e in cat.entries}) == 50 and all(e.usable for e in cat.entries)


def test_inspect_path_by_hand(stores, tmp_path):
    root, params = stores
    blob = next((root / "ollama" / "blobs").glob("sha256-*"))
    assert inspect_path(root / "ggufs" / "good.gguf").parameters == params["good.gguf"]
    (tmp_path / "notes.txt").write_text("hello")
    assert "not a model" in inspect_path(tmp_path / "notes.txt").error
    assert inspect_path(tmp_path / "nothing").error == "nothing at this path"
    assert "several models" in inspect_path(root / "ggufs").error
    assert inspect_path(blob).source == "path"  # a suffix-less blob is still recognised by its magic bytes


def test_model_folder_without_safetensors_or_with_a_cut_file(tmp_path):
    files, n = hf_model_files()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_bytes(files["config.json"])
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"pickle")
    assert "only safetensors" in read_folder(tmp_path / "bin", "bin", "folder").error
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "config.json").write_bytes(files["config.json"])
    (tmp_path / "cut" / "model.safetensors").write_bytes(files["model.safetensors"][:200])
    assert "cut off" in read_folder(tmp_path / "cut", "cut", "folder").error
    (tmp_path / "ok").mkdir()
    for rel, data in files.items():
        (tmp_path / "ok" / rel).write_bytes(data)
    assert read_folder(tmp_path / "ok", "ok", "folder").parameters == n


def test_real_tiny_model_folder_matches_torch(tiny_model_dir):
    """The catalog's count from safetensors headers equals the loaded model's parameter count."""
    from transformers import AutoModelForCausalLM

    entry = read_folder(tiny_model_dir, "tiny", "folder")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert entry.parameters == sum(p.numel() for p in model.parameters())
    assert entry.family == "llama" and entry.chat_template is True and entry.precision == "float32"
    header = safetensors_header(tiny_model_dir / "model.safetensors")
    assert "model.embed_tokens.weight" in header


@pytest.mark.parametrize("quantised", [False, True])
def test_header_reader_agrees_with_the_gguf_package(tmp_path, quantised):
    """Every metadata field as gguf.GGUFReader reads it (long arrays: their length), the same
    tensors, and the file's exact size; a cut file is refused where the reader fails too."""
    from gguf import GGUFReader

    path = write_gguf(tmp_path / "m.gguf", arch="qwen2", quantised=quantised, hidden=32, license="mit")
    full, ours = GGUFReader(str(path)), read_gguf(path)
    fields = {k: f for k, f in full.fields.items() if not k.startswith("GGUF.")}
    assert set(fields) == set(ours.metadata) | set(ours.array_lengths)
    for key, field in fields.items():
        if key in ours.array_lengths:
            assert ours.array_lengths[key] == len(field.contents()), key
        else:
            assert ours.metadata[key] == pytest.approx(field.contents()), key
    assert ours.parameters == sum(int(t.n_elements) for t in full.tensors) == gguf_param_count(hidden=32)
    assert ours.expected_size == path.stat().st_size
    assert ours.quantisation == ("Q8_0" if quantised else "F32")
    whole = path.read_bytes()
    for cut in (30, 600, len(whole) - 1):
        (tmp_path / "cut.gguf").write_bytes(whole[:cut])
        with pytest.raises(ValueError, match="cut off"):
            read_gguf(tmp_path / "cut.gguf")
        with pytest.raises(ValueError):  # the gguf package: numpy cannot view the cut-off bytes
            GGUFReader(str(tmp_path / "cut.gguf"))


def test_shape_and_estimate_from_gguf_keys(tmp_path):
    entry = read_gguf_file(write_gguf(tmp_path / "m.gguf", hidden=16, layers=2, ffn=32), None, "path")
    assert entry.shape == ModelShape(gguf_param_count(), hidden=16, layers=2, ffn=32, vocab=100, kv_dim=16)


# --------------------------------------------------------------------------- the fit estimate


def test_training_memory_by_hand():
    """1,000 parameters, 2 layers of width 10 (ffn 20), vocab 50, one pair of 4 tokens (8 tokens):
    weights 4,000 B, gradients 4,000, AdamW 8,000; activations 8 tokens x 2 layers x
    (16 x 10 + 4 x 20) values x 4 B = 15,360, head 4 scored tokens x 50 x 4 B x 3 = 2,400 (under
    one chunk). LoRA adds 8 tokens x 2 layers x (18 x 10 + 3 x 20) B = 3,840 (dropout masks and
    bf16 input copies of its adapters) and keeps its base in the compute precision."""
    shape = ModelShape(1000, hidden=10, layers=2, ffn=20, vocab=50, kv_dim=10)
    full = fit_mod.training_memory(shape, lora=False, batch_pairs=1, max_length=4)
    assert (full.weights, full.gradients, full.optimizer, full.activations) == (4000, 4000, 8000, 17760)
    assert full.total == 4000 + 4000 + 8000 + 17760 + fit_mod.RUNTIME_BYTES
    lora = fit_mod.training_memory(shape, lora=True, batch_pairs=1, max_length=4)
    adapter = 2 * 16 * ((10 + 10) * 2 + (10 + 10) * 2 + (10 + 20) * 3)  # rank 16 on q, o, k, v, gate, up, down
    assert fit_mod.lora_parameters(shape) == adapter == 5440
    assert (lora.weights, lora.gradients, lora.optimizer) == (4000 + 4 * adapter, 4 * adapter, 8 * adapter)
    assert lora.activations == full.activations + 3840 == 21600
    bf16_lora = fit_mod.training_memory(shape, lora=True, batch_pairs=1, max_length=4, autocast_bytes=2)
    assert bf16_lora.weights == 2 * 1000 + 4 * adapter  # a bf16 frozen base, an fp32 adapter
    bf16 = fit_mod.training_memory(shape, lora=False, batch_pairs=1, max_length=4, autocast_bytes=2)
    assert bf16.activations == 15360 // 2 + 2400  # the head stays fp32


def test_verdicts_move_with_free_memory():
    """~Llama-3.2-1B on a CPU: checkpointed full fine-tuning (16 B a weight), in micro-batches down to
    1 pair, still beats LoRA without checkpointing, whose activations are larger; LoRA with
    checkpointing in 1-pair micro-batches is the last resort."""
    shape = ModelShape(1_000_000_000, hidden=2048, layers=16, ffn=8192, vocab=128_256, kv_dim=512)

    def total(lora, ckpt, pairs=4):
        return fit_mod.training_memory(shape, lora=lora, batch_pairs=pairs, checkpointed=ckpt).total

    def at(total_bytes, delta):
        v = fit_verdict(shape, int(total_bytes / fit_mod.HEADROOM) + delta)
        return v.verdict, v.gradient_checkpointing, v.micro_batch

    assert total(True, True, 1) < total(True, True) < total(False, True, 1) < total(False, True) \
        < total(True, False) < total(False, False)
    assert at(total(False, False), 10) == (FULL_FITS, False, 4)
    assert at(total(False, False), -10) == (FULL_FITS, True, 4)
    assert at(total(False, True), -10) == (FULL_FITS, True, 2)
    assert at(total(False, True, 1), -10) == (LORA_ONLY, True, 4)
    assert at(total(True, True), -10) == (LORA_ONLY, True, 2)
    assert at(total(True, True, 1), -10) == (TOO_LARGE, False, 0)
    v = fit_verdict(shape, 64 * GiB, "cuda:0 (H200)", precision="bfloat16")
    assert v.full.activations < fit_mod.training_memory(shape, lora=False).activations  # bf16 autocast on CUDA
    assert v.explain().startswith(FULL_FITS + ": full fine-tune needs ~")


@pytest.mark.parametrize("pairs, length, peak", [(2, 256, 4.17e9), (4, 512, 10.21e9)])
def test_estimate_matches_measured_smollm2_steps(pairs, length, peak):
    """bench/catalog_memory.py on this machine (fp32 CPU, two AdamW steps, each a forward and
    backward through dpo_engine.logps with half of each row scored): SmolLM2-135M's peak RSS.
    The estimate must not be below it (a "fits" that does not) nor more than 25% above it."""
    smol = ModelShape(134_515_008, hidden=576, layers=30, ffn=1536, vocab=49_152, kv_dim=192)
    est = fit_mod.training_memory(smol, lora=False, batch_pairs=pairs, max_length=length).total
    assert peak <= est <= 1.25 * peak


def test_catalog_verdicts_with_mocked_free_memory(stores, monkeypatch):
    root, _ = stores
    plenty = catalog_of(root, free=64 * GiB)
    usable = [e for e in plenty.entries if e.usable]
    assert usable and all(e.fit.verdict == FULL_FITS for e in usable)
    assert all(e.fit is None for e in plenty.entries if not e.usable)
    # the tiny models' estimates are the runtime plus a little: a budget just below it leaves nothing
    monkeypatch.setattr(fit_mod, "free_ram", lambda: int(fit_mod.RUNTIME_BYTES * 0.5))
    starved = catalog_of(root, free=None)
    assert starved.device == "cpu" and starved.free_bytes == int(fit_mod.RUNTIME_BYTES * 0.5)
    assert all(e.fit.verdict == TOO_LARGE for e in starved.entries if e.usable)


def test_free_ram_reads_meminfo_without_psutil(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_psutil(name, *a, **kw):
        if name == "psutil":
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    with open("/proc/meminfo") as fh:
        available = next(int(line.split()[1]) for line in fh if line.startswith("MemAvailable:")) * 1024
    assert abs(fit_mod.free_ram() - available) < 256 * 2**20  # the same figure, give or take what moved meanwhile


# --------------------------------------------------------------------------- the command


def test_models_command_json(stores, tmp_path, monkeypatch):
    root, params = stores
    monkeypatch.setenv("HF_HUB_CACHE", str(root / "hf"))
    monkeypatch.setenv("OLLAMA_MODELS", str(root / "ollama"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no LM Studio folders
    monkeypatch.setenv("DPO_STUDIO_CACHE", str(tmp_path / "cache"))  # the default model not prepared
    monkeypatch.setattr(fit_mod, "free_ram", lambda: 32 * GiB)
    result = CliRunner().invoke(main, ["models", "--json", "--device", "cpu", "--folder", str(root / "ggufs")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["device"] == "cpu" and data["free_bytes"] == 32 * GiB
    models = {m["name"]: m for m in data["models"]}
    assert models["SmolLM2-135M-Instruct (default)"]["path"] == "default"
    assert "not prepared yet" in models["SmolLM2-135M-Instruct (default)"]["notes"][0]
    for name, n in params.items():
        assert models[name]["parameters"] == n and models[name]["verdict"] == FULL_FITS
        assert models[name]["fit"]["mode"] == "full" and models[name]["fit"]["base"] == "fp32"
        assert models[name]["fit"]["full"]["total"] > models[name]["fit"]["full"]["weights"] > 0
    assert "not a GGUF file" in models["random.gguf"]["error"] and models["random.gguf"]["verdict"] is None
    text = CliRunner().invoke(main, ["models", "--device", "cpu", "--folder", str(root / "ggufs")])
    assert text.exit_code == 0 and "tiny:latest" in text.output and "error: unreadable GGUF" in text.output


def test_models_command_lists_a_projects_checkpoints(tmp_path, tiny_model_dir, monkeypatch):
    import shutil

    from dpo_engine.store.opening import open_project

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "none"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "none"))
    monkeypatch.setenv("DPO_STUDIO_CACHE", str(tmp_path / "cache"))
    shutil.copytree(tiny_model_dir, tmp_path / "run1")
    with open_project(tmp_path / "p.dpo") as project:
        for folder in ("run1", "gone"):
            run = project.runs.create({"model": "default"})
            project.runs.finish(run, "finished", checkpoint=str(tmp_path / folder))
    result = CliRunner().invoke(main, ["models", "--json", "--device", "cpu", "--project", str(tmp_path / "p.dpo")])
    assert result.exit_code == 0, result.output
    runs = [m for m in json.loads(result.output)["models"] if m["source"] == "checkpoint"]
    assert [m["name"] for m in runs] == ["run 1: run1", "run 2: gone"]
    assert runs[0]["family"] == "llama" and runs[0]["verdict"] == FULL_FITS
    assert runs[1]["error"] == "the checkpoint folder is no longer there"
    assert np.isfinite(runs[0]["fit"]["budget"])


def test_gradient_checkpointing_is_asked_for_only_where_activations_decide():
    """Checkpointing keeps one hidden-wide value per token and layer plus CKPT_LAYERS (3.5) layers'
    activations: 8 tokens x (2 layers x 10 + 3.5 x (16 x 10 + 4 x 20)) x 4 B = 27,520, plus the head's 2,400."""
    shape = ModelShape(1000, hidden=10, layers=2, ffn=20, vocab=50, kv_dim=10)
    ckpt = fit_mod.training_memory(shape, lora=False, batch_pairs=1, max_length=4, checkpointed=True)
    assert ckpt.activations == 8 * (2 * 10 + 3.5 * 240) * 4 + 2400 == 29920
    big = ModelShape(500_000_000, hidden=1024, layers=24, ffn=4096, vocab=32_000, kv_dim=256)
    full = fit_mod.training_memory(big, lora=False)
    full_ckpt = fit_mod.training_memory(big, lora=False, checkpointed=True)
    lora = fit_mod.training_memory(big, lora=True)
    assert full_ckpt.total < full.total and full_ckpt.total < lora.total  # activations dominate here
    plain = fit_verdict(big, int(full.total / fit_mod.HEADROOM) + 10)
    assert (plain.verdict, plain.gradient_checkpointing) == (FULL_FITS, False)
    squeezed = fit_verdict(big, int(full_ckpt.total / fit_mod.HEADROOM) + 10)
    assert (squeezed.verdict, squeezed.gradient_checkpointing) == (FULL_FITS, True)
    assert "with gradient checkpointing" in squeezed.explain()
    lora_ckpt = fit_mod.training_memory(big, lora=True, checkpointed=True)
    tight = fit_verdict(big, int(lora_ckpt.total / fit_mod.HEADROOM) + 10)
    assert (tight.verdict, tight.gradient_checkpointing, tight.micro_batch) == (LORA_ONLY, True, 4)
    smallest = fit_mod.training_memory(big, lora=True, batch_pairs=1, checkpointed=True)
    assert fit_verdict(big, int(lora_ckpt.total / fit_mod.HEADROOM) - 10).micro_batch == 2
    assert fit_verdict(big, int(smallest.total / fit_mod.HEADROOM) - 10).verdict == TOO_LARGE


def test_an_ollama_blob_resolves_as_a_gguf_under_a_gguf_name(stores, tmp_path, monkeypatch):
    """The catalog hands load_model a suffix-less blob path; transformers reads a GGUF only by its
    .gguf suffix (anything else it would unpickle), so conversion sees a .gguf name for the same bytes."""
    from dpo_engine import models

    root, _ = stores
    blob = by_name(catalog_of(root))["tiny:latest"].path
    monkeypatch.setenv("DPO_STUDIO_CACHE", str(tmp_path / "cache"))
    seen = []

    def fake_convert(gguf, dest, source):
        seen.append((gguf.name, gguf.read_bytes() == Path(blob).read_bytes(), source))
        dest.mkdir(parents=True)
        (dest / "config.json").write_text("{}")
        (dest / models.CONVERSION_RECORD).write_text("{}")
        yield from ()

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    resolved = models.resolve_model_ref(blob)
    assert resolved.kind == "gguf" and seen == [(f"{Path(blob).name}.gguf", True, str(Path(blob).resolve()))]
    assert not list((tmp_path / "cache").glob("gguf-link-*"))  # the temporary name is gone
    with pytest.raises(models.ModelNotFoundError):
        models.resolve_model_ref(str(tmp_path / "sha256-missing"))
