"""An export loses nothing, whatever the person types (issue 35, items 1, 4 and 7's export parts).

- The target may not be, be inside, or hold any input: the model, its LoRA adapter, and the base model
  the adapter applies to (a folder, `default` in the user cache, a .gguf, a hub id's cache folder),
  whatever --overwrite says.
- A missing parent folder is an error naming it (`export-model` and the data `export`); nothing is made.
- What an export killed mid-write left (`.<name>.part-<pid>-*`) is removed by the next one.
- A Modelfile value (an Ollama model name, a FROM or ADAPTER path) is written so that Ollama's parser
  (ported in tests/ollama_modelfile.py) reads back exactly it, or refused with the reason: none adds a line.
- A LoRA adapter of another model is refused with one clear message in every format.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from dpo_engine.cli.main import main
from dpo_engine.errors import DataError, ModelError
from dpo_engine.export import export_model
from tests.model_stores import write_ollama_manifest
from tests.ollama_modelfile import parse_modelfile
from tests.test_export_lora import make_lora_run
from tests.tiny_model import build_bpe_tokenizer

MODEL_LAYER = "application/vnd.ollama.image.model"


def _llama(folder: Path, hidden: int) -> Path:
    """A tiny Llama with the BPE tokenizer a GGUF can carry; `hidden` wide."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_bpe_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _digest(path: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `path` (or of the file itself)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {p.relative_to(path).as_posix() if p != path else p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return _llama(tmp_path_factory.mktemp("base") / "base", 64)


@pytest.fixture(scope="module")
def run(base, tmp_path_factory) -> Path:
    """A LoRA run over `base` (a folder)."""
    return make_lora_run(base, tmp_path_factory.mktemp("runs") / "lora", str(base))


# --------------------------------------------------------------------------- 1. the base model is an input


@pytest.mark.parametrize("fmt,target", [("hf", "{base}"), ("gguf", "{base}/model.safetensors"),
                                        ("ollama", "{base}/tokenizer.json.d"), ("hf", "{base}/.."),
                                        ("gguf-lora", "{base}/adapter.gguf")])
def test_an_export_never_replaces_the_lora_runs_base(run, base, fmt, target):
    """The audit's commands (`--format hf --output <base> --overwrite`, `--format gguf --output
    <base>/model.safetensors --overwrite`) replaced the base and exited 0; now each is refused, and so is a
    target inside the base or one holding it."""
    before = _digest(base)
    output = target.format(base=base)
    with pytest.raises(DataError, match="base model of the LoRA run"):
        export_model(str(run), fmt, output, overwrite=True)
    assert _digest(base) == before
    assert sorted(p.name for p in base.parent.iterdir()) == ["base"]  # nothing beside it either


def test_the_cli_refuses_the_audits_commands_with_a_message(run, base):
    before = _digest(base)
    for fmt, output in (("hf", base), ("gguf", base / "model.safetensors")):
        result = CliRunner().invoke(main, ["export-model", str(run), "--format", fmt, "--output", str(output),
                                           "--overwrite"])
        assert result.exit_code == 1, result.output
        assert "base model of the LoRA run" in result.output and "Traceback" not in result.output
    assert _digest(base) == before


def test_a_run_over_default_never_replaces_the_converted_default_model(base, tmp_path, monkeypatch):
    """For a run over `default` the base is the converted model in the user cache; it is refused before
    anything is loaded (the folder here stands in for the converted SmolLM2)."""
    from dpo_engine.models import default_model_dir

    monkeypatch.setenv("DPO_STUDIO_CACHE", str(tmp_path / "cache"))
    default = default_model_dir()
    shutil.copytree(base, default)
    lora = make_lora_run(base, tmp_path / "over-default", "default")
    before = _digest(default)
    for fmt, output in (("gguf", default / "model.safetensors"), ("hf", default), ("hf", default.parent)):
        with pytest.raises(DataError, match="base model of the LoRA run"):
            export_model(str(lora), fmt, output, overwrite=True)
    assert _digest(default) == before


def test_a_gguf_or_hub_base_is_protected_too(base, tmp_path, monkeypatch):
    """A .gguf base (the file, and its converted copy) and a hub id's folder in the Hugging Face cache."""
    import huggingface_hub.constants

    gguf = tmp_path / "base.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    lora = make_lora_run(base, tmp_path / "over-gguf", str(gguf))
    with pytest.raises(DataError, match="base model of the LoRA run"):
        export_model(str(lora), "gguf", gguf, overwrite=True)
    assert gguf.read_bytes() == b"GGUF" + bytes(60)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    hub_run = make_lora_run(base, tmp_path / "over-hub", "org/tiny")
    with pytest.raises(DataError, match="base model of the LoRA run"):
        export_model(str(hub_run), "hf", repo / "snapshots" / "abc", overwrite=True)


def test_an_existing_folder_inside_the_run_is_not_replaced(run, tmp_path):
    """--overwrite onto a folder inside the run's checkpoint (its trainer state, say) replaced it."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "trainer_state").mkdir()
    (copy / "trainer_state" / "state.json").write_text("{}")
    with pytest.raises(DataError, match="inside the model being exported"):
        export_model(str(copy), "hf", copy / "trainer_state", overwrite=True)
    assert (copy / "trainer_state" / "state.json").read_text() == "{}"


# --------------------------------------------------------------------------- 7. a missing parent folder


@pytest.mark.parametrize("fmt,name", [("gguf", "m.gguf"), ("hf", "m")])
def test_a_missing_parent_folder_is_an_error_naming_it(base, tmp_path, fmt, name):
    with pytest.raises(DataError, match=re.escape(f"The folder {tmp_path / 'typo' / 'deeper'} does not exist")):
        export_model(str(base), fmt, tmp_path / "typo" / "deeper" / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no folder made


def test_the_data_export_does_not_make_folders_either(tmp_path):
    from dpo_engine.store.project import open_project

    project = tmp_path / "p.sqlite"
    open_project(project).close()
    result = CliRunner().invoke(main, ["export", "--project", str(project), str(tmp_path / "typo" / "pairs.jsonl")])
    assert result.exit_code == 1 and f"The folder {tmp_path / 'typo'} does not exist" in result.output
    assert not (tmp_path / "typo").exists()
    result = CliRunner().invoke(main, ["export-model", "--format", "gguf", "--output", str(tmp_path / "no" / "m.gguf"),
                                       str(tmp_path)])
    assert result.exit_code == 1 and not (tmp_path / "no").exists()


# --------------------------------------------------------------------------- 7. stale .part files


KILLED_EXPORT = """
import os, signal, sys
from dpo_engine.atomic import staged
with staged(sys.argv[1], as_folder=sys.argv[2] == "folder") as tmp:
    path = tmp / "model.safetensors" if sys.argv[2] == "folder" else tmp
    path.write_bytes(b"half a model")
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 mid-export
"""


@pytest.mark.parametrize("fmt,name,kind", [("gguf", "m.gguf", "file"), ("hf", "m", "folder")])
def test_what_a_killed_export_left_is_removed_by_the_next(base, tmp_path, fmt, name, kind):
    out = tmp_path / name
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, str(out), kind], env=env)
    assert done.wait() == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".{name}.part-{done.pid}-")
    alive = tmp_path / f".{name}.part-{os.getpid()}-feedbeef"  # a running export's (ours): not touched
    alive.write_bytes(b"")
    export_model(str(base), fmt, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, alive.name])


def test_a_kill_between_the_two_renames_gives_the_old_export_back(tmp_path):
    from dpo_engine.atomic import staged

    out = tmp_path / "pairs.jsonl"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = gone.pid  # a process id that no longer runs
    (tmp_path / f".pairs.jsonl.old-{dead}-0badc0de").write_text("the earlier export")
    with staged(out) as tmp:  # the next export finds the earlier one first, then replaces it as asked
        assert out.read_text() == "the earlier export"
        tmp.write_text("the new export")
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.jsonl"] and out.read_text() == "the new export"


# --------------------------------------------------------------------------- 4. the Modelfile


@pytest.mark.parametrize("value", ["tiny:latest", "./my model.gguf", " leading space", "trailing space ",
                                   '"quoted"', '"', '""', 'in """ the middle', "tab\there"])
def test_a_name_or_path_reads_back_exactly_through_ollamas_parser(value):
    from dpo_engine.export.ollama import quote_value

    text = f"FROM {quote_value(value, 'path')}\nPARAMETER stop {quote_value(value, 'stop', 'quoted')}\n"
    assert parse_modelfile(text) == [("model", value), ("stop", value)]


@pytest.mark.parametrize("value,why", [("evil\nSYSTEM pwned", "line break"), ("a\rb", "line break"),
                                       ("nul\x00", "unprintable"), ("esc\x1b[0m", "unprintable")])
def test_a_value_that_would_add_a_line_or_change_is_refused(value, why):
    from dpo_engine.export.ollama import quote_value

    with pytest.raises(ModelError, match=why):
        quote_value(value, "path")


def test_prose_reads_back_or_is_refused():
    """The template and system prompt: several lines in triple quotes; a line ending in three quotes would
    end the value early, so it is refused, not written."""
    from dpo_engine.export.ollama import CHATML_TEMPLATE, quote_value

    for text in (CHATML_TEMPLATE, 'You are "helpful".\nAnswer in """ blocks.', 'ends in a quote"'):
        assert parse_modelfile(f"FROM x\nSYSTEM {quote_value(text, 'prompt', 'prose')}\n") == [
            ("model", "x"), ("system", text)]
    with pytest.raises(ModelError, match="three double quotes"):
        quote_value('one """\ntwo', "prompt", "prose")


def _ollama_store(root: Path, base: Path, tmp_path: Path, model: str) -> Path:
    """An Ollama store holding `base` as a GGUF blob under the name `model`:latest; returns the blob."""
    export_model(str(base), "gguf", tmp_path / "b.gguf")
    data = (tmp_path / "b.gguf").read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    blob = root / "blobs" / digest.replace(":", "-")
    blob.write_bytes(data)
    write_ollama_manifest(root, model, "latest", [{"mediaType": MODEL_LAYER, "digest": digest, "size": len(data)}])
    return blob


def test_a_store_folder_with_a_newline_cannot_inject_a_line(base, tmp_path, monkeypatch):
    """A store folder named `evil<newline>SYSTEM pwned` once gave `FROM evil` / `SYSTEM pwned:latest`."""
    monkeypatch.setenv("DPO_STUDIO_CACHE", str(tmp_path / "cache"))
    blob = _ollama_store(tmp_path / "ollama", base, tmp_path, "evil\nSYSTEM pwned")
    lora = make_lora_run(base, tmp_path / "run", str(blob))
    with pytest.raises(ModelError, match="not a model name Ollama accepts"):
        export_model(str(lora), "ollama", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_a_stray_manifest_is_no_model_name(base, tmp_path, monkeypatch):
    """A manifest file directly under the registry's folder once became `FROM registry.ollama.ai:latest`."""
    from dpo_engine.catalog.sources import ollama_entries

    monkeypatch.setenv("DPO_STUDIO_CACHE", str(tmp_path / "cache"))
    store = tmp_path / "ollama"
    blob = _ollama_store(store, base, tmp_path, "tiny")
    real = store / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    shutil.copy(real, store / "manifests" / "registry.ollama.ai" / "latest")
    shutil.copy(real, store / "manifests" / "registry.ollama.ai" / "library" / "latest")
    assert [e.name for e in ollama_entries(store)] == ["tiny:latest"]
    lora = make_lora_run(base, tmp_path / "run", str(blob))
    export_model(str(lora), "ollama", tmp_path / "out")
    text = (tmp_path / "out" / "Modelfile").read_text()
    assert parse_modelfile(text) == [("model", "tiny:latest"), ("adapter", "./out-adapter.gguf")]


def test_a_newline_in_the_output_folder_cannot_split_the_from_line(base, tmp_path):
    """A plain ollama export into `m<newline>SYSTEM pwned` wrote `FROM ./m` and `SYSTEM pwned.gguf` (exit 0)."""
    out = tmp_path / "m\nSYSTEM pwned"
    with pytest.raises(ModelError, match="line break"):
        export_model(str(base), "ollama", out)
    assert list(tmp_path.iterdir()) == []
    export_model(str(base), "ollama", tmp_path / "my model")  # a space is fine: it reads back
    text = (tmp_path / "my model" / "Modelfile").read_text()
    commands = parse_modelfile(text)
    assert commands[0] == ("model", "./my model.gguf") and [n for n, _ in commands].count("model") == 1
    assert {n for n, _ in commands} == {"model", "template", "system", "stop"}


# --------------------------------------------------------------------------- 7. an adapter of another model


@pytest.fixture(scope="module")
def alien_run(base, tmp_path_factory) -> Path:
    """A hand-edited run: an adapter trained on a 32-wide Llama, its run file naming the 64-wide `base`."""
    root = tmp_path_factory.mktemp("alien")
    return make_lora_run(_llama(root / "other", 32), root / "run", str(base))


@pytest.mark.parametrize("fmt", ["hf", "gguf", "gguf-lora", "ollama", "peft"])
def test_an_adapter_of_another_model_is_refused_clearly_in_every_format(alien_run, tmp_path, fmt):
    """gguf-lora wrote a file llama.cpp cannot apply (exit 0) and hf printed PyTorch's size-mismatch dump."""
    out = tmp_path / ("x.gguf" if fmt in ("gguf", "gguf-lora") else "x")
    result = CliRunner().invoke(main, ["export-model", str(alien_run), "--format", fmt, "--output", str(out)])
    assert result.exit_code == 1, result.output
    error = result.output.split("Error: ", 1)[1]
    assert "does not fit its base model" in error and "x 64" in error and "base_model" in error
    assert len(error.strip().splitlines()) == 1 and "size mismatch for" not in error
    assert list(tmp_path.iterdir()) == []


def test_peft_says_so_in_one_line_where_the_base_was_not_checked_first(alien_run, base):
    """A base not on this disk is not read before the merge; PEFT's own refusal is then one line."""
    from dpo_engine.export.source import find_source, load_merged_model

    with pytest.raises(ModelError) as info:
        load_merged_model(find_source(str(alien_run)))
    assert "does not fit its base model" in str(info.value) and str(info.value).count("size mismatch") == 1
