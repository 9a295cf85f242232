"""Issue 35, item 3: discovery is per model, not per store. A damaged file (a config.json or an
Ollama manifest nested 10^5 levels deep: RecursionError in json) or an unreadable folder is
one broken row with its reason, and every other model of that HF cache, Ollama store or LM
Studio folder is still listed. Each test failed on the code before the fix (the whole store
was one "cannot be listed" row, or an unreadable folder vanished without a row).
docs/reliability.md lists them."""

from __future__ import annotations

import os

import pytest

from dpo_engine.catalog import list_models
from dpo_engine.catalog.sources import Locations
from tests.deny_access import deny_access
from tests.model_stores import (build_hf_cache, build_ollama_store, gguf_param_count, hf_model_files, write_gguf,
                                write_hf_repo, write_ollama_manifest)

GiB = 2**30
DEEP = ("[" * 10**5 + "]" * 10**5).encode()  # json.loads raises RecursionError on it (the audit's file)


def test_deny_access_behaves_like_chmod_000(monkeypatch, tmp_path):
    """The emulation itself: what a process of uid 65534 meets in a real chmod-000 folder
    (checked once so, on Python 3.11): the folder is a folder, everything else is refused, and
    os.walk without `onerror` skips it in silence."""
    shut = tmp_path / "shut"
    (shut / "inner").mkdir(parents=True)
    (shut / "f.json").write_text("{}")
    deny_access(monkeypatch, shut)
    assert shut.is_dir()
    for reach in (lambda: list(shut.iterdir()), lambda: (shut / "f.json").read_text(),
                  lambda: (shut / "inner").stat(), lambda: (shut / "f.json").exists()):
        with pytest.raises(PermissionError):
            reach()
    assert list(os.walk(shut)) == [] and sorted(os.listdir(tmp_path)) == ["shut"]


def _listing(loc: Locations, folders=()) -> dict:
    cat = list_models(folders=list(folders), locations=loc, free_bytes=64 * GiB, device="cpu", include_default=False)
    assert not any("cannot be listed" in (e.error or "") for e in cat.entries), [e.error for e in cat.entries]
    return {e.name: e for e in cat.entries}


def _all_usable(entries: dict, params: dict) -> None:
    for name, n in params.items():
        assert name in entries, (name, sorted(entries))
        assert entries[name].usable and entries[name].parameters == n, (name, entries[name].error)


# ----------------------------------------------------------------------------- Hugging Face cache
def test_a_deeply_nested_config_in_the_hf_cache_is_one_broken_row(tmp_path):
    params = build_hf_cache(tmp_path / "hf")
    files, _ = hf_model_files()
    write_hf_repo(tmp_path / "hf", "org/deep", {**files, "config.json": DEEP})
    entries = _listing(Locations(tmp_path / "hf", None, ()))
    _all_usable(entries, params)
    assert not entries["org/deep"].usable and "nested too deeply" in entries["org/deep"].error
    assert "missing commit" in entries["tiny-org/damaged"].error  # the damaged fixture repo still says why


def test_a_deeply_nested_tokenizer_config_or_safetensors_header_is_one_broken_row(tmp_path):
    params = build_hf_cache(tmp_path / "hf")
    files, _ = hf_model_files()
    write_hf_repo(tmp_path / "hf", "org/deep-tokenizer", {**files, "tokenizer_config.json": DEEP})
    deep_header = len(DEEP).to_bytes(8, "little") + DEEP
    write_hf_repo(tmp_path / "hf", "org/deep-weights", {**files, "model.safetensors": deep_header})
    entries = _listing(Locations(tmp_path / "hf", None, ()))
    _all_usable(entries, params)
    assert "nested too deeply" in entries["org/deep-tokenizer"].error
    assert "nested too deeply" in entries["org/deep-weights"].error


def test_an_unreadable_snapshots_folder_is_one_broken_row(monkeypatch, tmp_path):
    params = build_hf_cache(tmp_path / "hf")
    files, _ = hf_model_files()
    snapshot = write_hf_repo(tmp_path / "hf", "org/shut", files)
    deny_access(monkeypatch, snapshot.parent)  # chmod 000 models--org--shut/snapshots
    entries = _listing(Locations(tmp_path / "hf", None, ()))
    _all_usable(entries, params)
    assert not entries["org/shut"].usable and "Permission denied" in entries["org/shut"].error


# ----------------------------------------------------------------------------- Ollama
def test_a_deeply_nested_ollama_manifest_is_one_broken_row(tmp_path):
    params = build_ollama_store(tmp_path / "ollama", tmp_path / "scratch")
    deep = write_ollama_manifest(tmp_path / "ollama", "deep", "latest", [])
    deep.write_bytes(DEEP)
    entries = _listing(Locations(None, tmp_path / "ollama", ()))
    _all_usable(entries, params)
    assert not entries["deep:latest"].usable and "nested too deeply" in entries["deep:latest"].error


def test_an_unreadable_ollama_manifest_folder_is_one_broken_row(monkeypatch, tmp_path):
    params = build_ollama_store(tmp_path / "ollama", tmp_path / "scratch")
    shut = write_ollama_manifest(tmp_path / "ollama", "shut", "latest", []).parent
    deny_access(monkeypatch, shut)
    entries = _listing(Locations(None, tmp_path / "ollama", ()))
    _all_usable(entries, params)
    row = entries["shut"]  # named as its models would be: registry.ollama.ai/library/ dropped
    assert row.path == str(shut) and row.source == "ollama" and not row.usable and "Permission denied" in row.error


# ----------------------------------------------------------------------------- LM Studio / folders
def test_a_damaged_model_or_unreadable_folder_in_lm_studio_is_one_broken_row(monkeypatch, tmp_path):
    lms = tmp_path / "lmstudio"
    (lms / "pub" / "good").mkdir(parents=True)
    write_gguf(lms / "pub" / "good" / "m.gguf")
    files, n = hf_model_files()
    for name, config in (("hf", files["config.json"]), ("deep", DEEP)):
        (lms / "pub" / name).mkdir()
        for rel, data in {**files, "config.json": config}.items():
            (lms / "pub" / name / rel).write_bytes(data)
    (lms / "shut").mkdir()
    deny_access(monkeypatch, lms / "shut")
    entries = _listing(Locations(None, None, (lms,)))
    _all_usable(entries, {"pub/good/m.gguf": gguf_param_count(), "pub/hf": n})
    assert "nested too deeply" in entries["pub/deep"].error
    assert not entries["shut"].usable and "Permission denied" in entries["shut"].error
