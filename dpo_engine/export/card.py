"""The model card: README.md with the hub's front matter, what the model was trained on, how to load it."""

from __future__ import annotations

from dpo_engine.export.source import ExportSource, hub_id_of

# the run settings worth a reader's time, in the order shown (TrainConfig field names)
CARD_SETTINGS = ("loss", "beta", "lr", "epochs", "max_steps", "batch_size", "grad_accum", "max_length",
                 "schedule", "warmup_ratio", "seed")


def _front_matter(base: str | None, library: str, tags: list[str]) -> str:
    lines = ["---"]
    if base:
        lines.append(f"base_model: {base}")
    lines.append(f"library_name: {library}")
    lines.append("tags:")
    lines += [f"- {tag}" for tag in tags]
    lines.append("---")
    return "\n".join(lines)


def _settings(run: dict) -> list[str]:
    config = run.get("config") or {}
    rows = [f"| {key} | {config[key]} |" for key in CARD_SETTINGS if config.get(key) is not None]
    lora = config.get("lora")
    if lora:
        rows.append(f"| LoRA | rank {lora.get('rank')}, alpha {lora.get('alpha')}, "
                    f"on {', '.join(lora.get('target_modules', []))} |")
    if run.get("step") is not None:
        rows.append(f"| steps done | {run['step']} of {run.get('total_steps', '?')} ({run.get('status', '?')}) |")
    return ["| setting | value |", "|---|---|", *rows] if rows else []


def _how_to_load(fmt: str, name: str, gguf_name: str | None, base: str | None) -> list[str]:
    if fmt == "peft":
        return ["```python", "from peft import AutoPeftModelForCausalLM",
                f'model = AutoPeftModelForCausalLM.from_pretrained("{name}")  # loads {base or "the base"} too',
                "model = model.merge_and_unload()  # optional: plain transformers weights", "```"]
    if fmt == "ollama":
        return ["```sh", f"ollama create {name} -f Modelfile", f"ollama run {name}", "```",
                "", f"llama.cpp and LM Studio read `{gguf_name}` directly:", "",
                "```sh", f"llama-cli -m {gguf_name} -cnv", "```"]
    return ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
            f'model = AutoModelForCausalLM.from_pretrained("{name}")', "```", "",
            "For llama.cpp, LM Studio or Ollama, export a GGUF from DPO Studio "
            f"(`dpo-engine export-model {name} --format gguf --output {name}.gguf`)."]


def model_card(source: ExportSource, fmt: str, name: str, gguf_name: str | None = None) -> str:
    """README.md for an exported folder of format `fmt` ('hf' | 'peft' | 'ollama')."""
    base_ref = source.run.get("base_model") or source.base_ref
    base = hub_id_of(base_ref) if base_ref else hub_id_of(source.ref)
    library = {"hf": "transformers", "peft": "peft", "ollama": "gguf"}[fmt]
    tags = ["dpo", "dpo-studio"] + ["lora"] * (source.adapter is not None) + ["gguf"] * (fmt == "ollama")
    trained = bool(source.run)
    lines = [_front_matter(base, library, tags), "", f"# {name}", ""]
    if trained:
        lines += [f"Fine-tuned from {base or base_ref} with DPO (Direct Preference Optimization) in "
                  "DPO Studio: a person compared pairs of the model's answers, and the model was trained "
                  "to prefer the answers they chose.", ""]
        settings = _settings(source.run)
        if settings:
            lines += ["## Training", "", *settings, ""]
    else:
        lines += [f"Exported by DPO Studio from {base or source.ref}.", ""]
    lines += ["## Use it", "", *_how_to_load(fmt, name, gguf_name, base), ""]
    return "\n".join(lines)
