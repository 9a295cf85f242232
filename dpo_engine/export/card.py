"""The model card: README.md with the hub's front matter, what the model was trained on, how to load it.

With the project the run was trained in (`export.facts`), the card also gives the data (verdicts,
pairs, prompts, rankings, position and length bias), the held-out accuracy and loss at the first
eval and at the end, the Compare win rate with its 95% interval, and the loss and accuracy curves
as PNG files beside it. Numbers and model names only: no prompt or answer text reaches the card.
"""

from __future__ import annotations

from pathlib import Path

from dpo_engine.export.facts import ProjectFacts, display_name
from dpo_engine.export.plots import BLUE, ORANGE, PALE_BLUE, Series, line_chart, smooth
from dpo_engine.export.source import ExportSource, hub_id_of

LOSS_PNG, ACCURACY_PNG = "training_loss.png", "preference_accuracy.png"

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
    if _precision_words(run.get("precision")):
        rows.append(f"| precision | {_precision_words(run.get('precision'))} |")
    if run.get("step") is not None:
        rows.append(f"| steps done | {run['step']} of {run.get('total_steps', '?')} ({run.get('status', '?')}) |")
    return ["| setting | value |", "|---|---|", *rows] if rows else []


def _how_to_load(fmt: str, name: str, gguf_name: str | None, base: str | None,
                 ollama_base: str | None = None) -> list[str]:
    if fmt == "peft":
        return ["```python", "from peft import AutoPeftModelForCausalLM",
                f'model = AutoPeftModelForCausalLM.from_pretrained("{name}")  # loads {base or "the base"} too',
                "model = model.merge_and_unload()  # optional: plain transformers weights", "```"]
    if fmt == "ollama" and ollama_base:
        return ["```sh", f"ollama create {name} -f Modelfile", f"ollama run {name}", "```", "",
                f"The Modelfile takes {ollama_base} from Ollama's store and adds `{gguf_name}` over it "
                "(`ADAPTER`): the base is not copied. The adapter was trained on exactly that model's weights "
                "(its GGUF, dequantised), so over it the adapter adds what it learned and nothing else. "
                "llama.cpp applies the same adapter to the base's GGUF file:",
                "", "```sh", f"llama-cli -m <{ollama_base} GGUF file> --lora {gguf_name} -cnv", "```"]
    if fmt == "ollama":
        return ["```sh", f"ollama create {name} -f Modelfile", f"ollama run {name}", "```",
                "", f"llama.cpp and LM Studio read `{gguf_name}` directly:", "",
                "```sh", f"llama-cli -m {gguf_name} -cnv", "```", "",
                f"For LM Studio, put it in its models folder as `~/.lmstudio/models/dpo-studio/{name}/{gguf_name}`."]
    return ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
            f'model = AutoModelForCausalLM.from_pretrained("{name}")', "```", "",
            "For llama.cpp, LM Studio or Ollama, export a GGUF from DPO Studio "
            f"(`dpo-engine export-model {name} --format gguf --output {name}.gguf`)."]


def files_section(source: ExportSource, fmt: str, base: str | None, quant: str | None,
                  ollama_base: str | None = None) -> list[str]:
    """What the export is: its base model, whether it is an adapter (or has one merged in), the weights' type."""
    lora = (source.run.get("config") or {}).get("lora") or {}
    if source.adapter is None:
        adapter = "none (all weights trained)" if source.run else "none"
    elif fmt == "peft" or ollama_base:
        adapter = "this export is the LoRA adapter alone" + (f" (rank {lora['rank']})" if lora.get("rank") else "")
    else:
        adapter = "the run's LoRA adapter, merged into the weights"
    weights = {"hf": "safetensors, as trained", "peft": "safetensors, as trained"}.get(fmt)
    if fmt == "ollama":
        weights = "GGUF LoRA, f32 (exact)" if ollama_base else f"GGUF, {quant or 'f16'}"
    rows = [f"| base model | {ollama_base or base or display_name(source.run.get('base_model') or source.ref)} |",
            f"| adapter | {adapter} |", f"| weights | {weights} |"]
    return ["## What this is", "", "| | |", "|---|---|", *rows, ""]


def _pct_tenths(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _chars(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def data_section(facts: ProjectFacts) -> list[str]:
    """The project's labeled data, as `dpo-engine stats` counts it."""
    s = facts.stats
    verdicts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in s.by_verdict.items())
    sources = ", ".join(f"{k} {v}" for k, v in s.by_source.items()) or "none"
    bias, length = s.position_bias, s.length
    return [
        "## Data", "",
        "| | |", "|---|---|",
        f"| verdicts (comparisons) | {s.comparisons} ({verdicts}) |",
        f"| verdicts by source | {sources} |",
        f"| usable pairs | {s.pairs} (train {s.pairs_by_split['train']}, "
        f"held out {s.pairs_by_split['eval']}) |",
        f"| prompts | {s.prompts} (train {s.prompts_by_split['train']}, held out "
        f"{s.prompts_by_split['eval']}); {s.labeled_prompts} labeled |",
        f"| ranking groups | {facts.ranking_groups} |",
        f"| position bias | the left answer won {bias.left_wins} of {bias.decided} labeled decisions "
        f"({_pct_tenths(bias.left_rate)}) |",
        f"| length bias | chosen answers {_chars(length.chosen_mean)} characters on average, rejected "
        f"{_chars(length.rejected_mean)} |",
        "",
        "Counted in the project when the model was exported. A pair is a left/right verdict on two "
        "different answers (ties, \"both bad\" and skips are not pairs); held-out prompts (about 1 in 10, "
        "fixed by a hash of the prompt) are never trained on. A position bias far from 50% or chosen answers "
        "much longer than rejected ones are preferences the model may have learned too.",
        "",
    ]


def _eval_table(facts: ProjectFacts) -> list[str]:
    """Held-out preference accuracy and loss at the first eval and at the end (one column when equal)."""
    acc, loss = facts.first_last("eval/rewards/accuracies"), facts.first_last("eval/loss")
    if acc is None and loss is None:
        return ["The run scored no held-out pairs (the project had none when it trained).", ""]
    (first, _), (last, _) = acc or loss
    columns = [0, 1] if first != last else [1]
    head = ([f"first eval (step {first})"] if first != last else []) + [f"at the end (step {last})"]

    def row(name: str, values, fmt) -> str:
        return f"| {name} | " + " | ".join(fmt(values[i][1]) if values else "n/a" for i in columns) + " |"

    return [f"| held-out pairs | {' | '.join(head)} |", "|---" * (len(head) + 1) + "|",
            row("preference accuracy", acc, _pct_tenths), row("loss", loss, "{:.4f}".format), "",
            "Preference accuracy: the share of held-out pairs where the model gives the chosen answer a higher "
            "implicit reward than the rejected one (strictly: before the first step the two are equal, so 0%).", ""]


def _matchup_table(facts: ProjectFacts) -> list[str]:
    if not facts.matchups:
        return []
    rows = [f"| {m.opponent} | {m.votes} | {m.wins} | {m.losses} | {m.ties} | {_pct_tenths(m.rate)} | "
            f"{_pct_tenths(m.low)} – {_pct_tenths(m.high)} |" for m in facts.matchups]
    return ["### Compare votes", "",
            "| against | votes | wins | losses | ties | win rate | 95% interval |", "|---|---|---|---|---|---|---|",
            *rows, "",
            "Votes from DPO Studio's Compare page, where a person picks the better of two answers to the same "
            "prompt, blind by default (the project does not record which votes were cast blind). Ties and "
            "\"both bad\" count as half a win, skips are not votes; the interval is Wilson's score interval.", ""]


def _precision_words(precision: dict | None) -> str:
    """The run record's precision ({"dtype", "autocast", "reason"}) in words, "" if unrecorded."""
    if not precision or not precision.get("dtype"):
        return ""
    how = f"{precision['dtype']} autocast over fp32 weights" if precision.get("autocast") else precision["dtype"]
    return how + (f" ({precision['reason']})" if precision.get("reason") else "")


def results_section(facts: ProjectFacts, plots: list[str], precision: dict | None = None) -> list[str]:
    if facts.run is None:
        lines = ["## Results", "", "No run of the project wrote this model's folder, so its training is not "
                 "described here.", ""]
        return lines + _matchup_table(facts) if facts.matchups else lines
    run = facts.run
    lines = ["## Results", "", f"Run {run.id} of the project ({run.status})."]
    train_loss = facts.first_last("loss")
    if train_loss:
        (s0, v0), (s1, v1) = train_loss
        lines[-1] += f" Training loss {v0:.4f} at step {s0}, {v1:.4f} at step {s1}."
    lines += ["", *_eval_table(facts)]
    if _precision_words(precision) and facts.first_last("eval/loss"):
        lines += [f"The held-out numbers were scored during training, in the run's precision: "
                  f"{_precision_words(precision)}. In bf16 a summed log-prob can differ from fp32 by ~1e-2 "
                  "relative; `dpo-engine eval` scores in fp32.", ""]
    lines += _matchup_table(facts)
    titles = {LOSS_PNG: "Loss", ACCURACY_PNG: "Preference accuracy"}
    lines += [f"![{titles[p]}]({p})" for p in plots]
    return lines + ([""] if plots else [])


def _curves(facts: ProjectFacts, train: str, held_out: str) -> list[Series]:
    points = facts.metrics.get(train) or []
    out = []
    if points:
        window = max(1, len(points) // 25) | 1  # odd: centred
        out.append(Series("train", tuple(points), PALE_BLUE if window > 1 else BLUE, width=1 if window > 1 else 2))
        if window > 1:
            out.append(Series("train (smoothed)", tuple(zip((s for s, _ in points),
                                                             smooth([v for _, v in points], window))), BLUE))
    if facts.metrics.get(held_out):
        out.append(Series("held-out", tuple(facts.metrics[held_out]), ORANGE, dots=True))
    return out


def write_plots(facts: ProjectFacts, folder: Path) -> list[str]:
    """training_loss.png and preference_accuracy.png in `folder` (those with something logged)."""
    written = []
    for name, title, y_label, train, held_out, y_range in (
            (LOSS_PNG, "DPO loss", "loss", "loss", "eval/loss", None),
            (ACCURACY_PNG, "Preference accuracy", "accuracy", "rewards/accuracies", "eval/rewards/accuracies",
             (0.0, 1.0))):
        series = _curves(facts, train, held_out)
        if series:
            line_chart(folder / name, title, "optimizer step", y_label, series, y_range)
            written.append(name)
    return written


def model_card(source: ExportSource, fmt: str, name: str, gguf_name: str | None = None,
               facts: ProjectFacts | None = None, plots: list[str] = (), quant: str | None = None,
               ollama_base: str | None = None) -> str:
    """README.md for an exported folder of format `fmt` ('hf' | 'peft' | 'ollama'); `facts` from the
    project the model was trained in, `plots` the PNG files written beside it."""
    base_ref = source.run.get("base_model") or source.base_ref
    base = hub_id_of(base_ref) if base_ref else hub_id_of(source.ref)
    library = {"hf": "transformers", "peft": "peft", "ollama": "gguf"}[fmt]
    tags = ["dpo", "dpo-studio"] + ["lora"] * (source.adapter is not None) + ["gguf"] * (fmt == "ollama")
    trained = bool(source.run) or (facts is not None and facts.run is not None)
    lines = [_front_matter(base, library, tags), "", f"# {name}", ""]
    if trained:
        origin = base or display_name(base_ref or source.ref)  # a hub id, or a folder's name (never its path)
        lines += [f"Fine-tuned from {origin} with DPO (Direct Preference Optimization) in DPO Studio: a person "
                  "compared pairs of the model's answers, and the model was trained to prefer the answers they "
                  "chose.", ""]
    else:
        lines += [f"Exported by DPO Studio from {base or display_name(source.ref)}.", ""]
    if facts is not None:
        lines += results_section(facts, list(plots), source.run.get("precision"))
        if facts.run is not None:
            lines += data_section(facts)
    settings = _settings(source.run or ({"config": facts.run.config} if facts and facts.run else {}))
    if trained and settings:
        lines += ["## Training", "", *settings, ""]
    lines += files_section(source, fmt, base, quant, ollama_base)
    lines += ["## Use it", "", *_how_to_load(fmt, name, gguf_name, base, ollama_base), ""]
    return "\n".join(lines)


def write_card(folder: Path, source: ExportSource, fmt: str, name: str, gguf_name: str | None = None,
               facts: ProjectFacts | None = None, quant: str | None = None, ollama_base: str | None = None) -> None:
    """README.md (and, with the project's facts, the PNG curves it shows) into the export folder."""
    plots = write_plots(facts, folder) if facts is not None and facts.run is not None else []
    (folder / "README.md").write_text(model_card(source, fmt, name, gguf_name, facts, plots, quant, ollama_base))
