"""A clean transformers folder, and a PEFT adapter folder, from an export source.

Clean means: safetensors weights (a LoRA adapter merged in), config, generation config, tokenizer
with its chat template, and a model card; nothing of DPO Studio's (trainer_state/, manifests,
dpo_studio_run.json).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from dpo_engine.errors import ConfigError
from dpo_engine.export.source import ADAPTER_CONFIG, ExportSource, hub_id_of

ADAPTER_FILES = (ADAPTER_CONFIG, "adapter_model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "added_tokens.json")


def write_hf_folder(model, tokenizer, folder: Path) -> None:
    """Weights as safetensors, config, generation config and tokenizer into `folder`."""
    model.config.use_cache = True  # whoever loads this will generate
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    for stray in folder.glob("*.bin"):  # never pickled weights, whatever a library adds
        stray.unlink()


def check_adapter(source: ExportSource) -> None:
    """Refuse a model with no (complete) LoRA adapter, saying what to export instead."""
    if source.adapter is None:
        raise ConfigError(f"{source.ref} was trained as a full fine-tune (or is a plain model): it has no LoRA "
                          "adapter to export. Use --format hf for a transformers folder, or gguf/ollama.")
    missing = [name for name in ADAPTER_FILES if not (source.adapter / name).is_file()]
    if missing:
        raise ConfigError(f"The adapter in {source.adapter} is incomplete (missing {', '.join(missing)}).")


def write_peft_folder(source: ExportSource, folder: Path) -> None:
    """The run's LoRA adapter (config + safetensors) and its tokenizer into `folder`.

    The adapter's `base_model_name_or_path` is made portable: the hub id of the default model
    instead of the path of its converted copy in this machine's cache.
    """
    check_adapter(source)
    for name in ADAPTER_FILES:
        shutil.copy2(source.adapter / name, folder / name)
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    base_ref = source.base_ref or config.get("base_model_name_or_path")
    portable = hub_id_of(base_ref) or base_ref
    if portable:
        config["base_model_name_or_path"] = portable
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    tokenizer_home = source.folder if source.folder is not None else source.adapter
    for name in TOKENIZER_FILES:
        if (tokenizer_home / name).is_file():
            shutil.copy2(tokenizer_home / name, folder / name)
