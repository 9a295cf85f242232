"""`dpo-engine eval`: score preference pairs under a policy and a reference, per pair.

For each pair: the four sequence log-probs, the response token counts, the implicit
rewards and the loss; then the metrics under TRL's names, over all pairs. The policy is
scored and released before the reference loads, so one model is in memory at a time;
when the reference is the policy itself it runs once.

The reference defaults to the one the policy was trained against: a DPO Studio checkpoint
folder carries `dpo_studio_run.json` with {"reference": REF, "base_model": REF}; without
it, the policy itself (every reward is then 0 and the DPO loss ln 2).

Precision: the run plan's scoring precision (`run_plan.plan_run`, the question the Compare page
asks too): fp32 unless `--dtype` names another or fp32 weights of the larger model do not fit in
the free memory; bf16 would move the summed log-probs by several 1e-3 relative, and the report
names the precision it scored in and why.

Public API (no click needed):
    read_pairs_jsonl(path) -> ([(line, PreferencePair)...], [(line, reason)...])
    default_reference(policy_ref) -> str
    model_logps(model, encoded, pad_id, batch_size) -> BatchLogps     in input order
    eval_events(data, policy_ref, reference_ref, settings, device)    yields EvalProgress, returns the report
    eval_report(data, policy_ref, reference_ref, settings, device) -> dict  blocking: the --json report
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generator, Sequence

import click

from dpo_engine.cli.base import DEVICE_HELP, choose_device, dtype_option, friendly_errors, progress_printer
from dpo_engine.encoding import EncodedPair, collate, encode_pair
from dpo_engine.devices import pick_device
from dpo_engine.errors import ConfigError, DataError
from dpo_engine.iters import drain, mapped
from dpo_engine.logps import BatchLogps, batch_logps, score_pairs
from dpo_engine.losses import LOSSES, LossParams, compute_metrics, get_loss
from dpo_engine.pairs import PreferencePair, parse_preference_record
from dpo_engine.train.checkpoints import RUN_FILE


@dataclass(frozen=True)
class EvalSettings:
    loss: str = "sigmoid"  # a name in losses.LOSSES
    beta: float = 0.1  # DPO's KL strength; TRL's default
    label_smoothing: float = 0.0  # robust loss only
    max_length: int | None = 1024  # TRL's default, so pairs are cut exactly as TRL cuts them
    batch_size: int = 8  # pairs per forward (2x rows); length-bucketed so padding stays small

    def __post_init__(self):  # fail before any model loads
        get_loss(self.loss)
        LossParams(beta=self.beta, label_smoothing=self.label_smoothing)
        if self.batch_size < 1:
            raise ConfigError("batch_size must be at least 1.")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError("max_length must be at least 2 (one prompt token and one response token).")


@dataclass(frozen=True)
class EvalProgress:
    """One step of an eval: loading a model or scoring the pairs under it."""

    stage: str  # "load" | "score"
    fraction: float  # 0..1 over the whole eval
    message: str


def read_pairs_jsonl(path) -> tuple[list[tuple[int, PreferencePair]], list[tuple[int, str]]]:
    """TRL standard/conversational or OpenAI preference JSONL -> (pairs, errors), 1-based lines."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"No data file at {path}.")
    pairs, errors = [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                pairs.append((line_no, parse_preference_record(json.loads(line))))
            except json.JSONDecodeError as exc:
                errors.append((line_no, f"not valid JSON ({exc.msg})"))
            except DataError as exc:
                errors.append((line_no, str(exc)))
    return pairs, errors


def default_reference(policy_ref: str) -> str:
    """The reference the policy was trained against, as its run file (RUN_FILE) names it
    ("reference": in round 2 the original base, not the round-1 checkpoint it started
    from), else its "base_model", else the policy itself."""
    run_file = Path(policy_ref).expanduser() / RUN_FILE
    if not run_file.is_file():
        return policy_ref
    try:
        info = json.loads(run_file.read_text(encoding="utf-8"))
        base = info.get("reference") or info.get("base_model")
    except (OSError, ValueError, AttributeError) as exc:
        raise DataError(f"{run_file} is unreadable ({exc}); pass --reference explicitly.") from exc
    if not base:
        return policy_ref
    relative = run_file.parent / base
    return str(relative) if not Path(base).is_absolute() and relative.exists() else base


def model_logps_events(model, encoded: Sequence[EncodedPair], pad_id: int,
                       batch_size: int) -> Generator[int, None, BatchLogps]:
    """Sequence log-probs of every pair, batched by length; yields the pairs done after each batch and
    returns them in input order."""
    device = next(model.parameters()).device
    return BatchLogps(*(yield from score_pairs(lambda batch: batch_logps(model, collate(batch, pad_id).to(device)),
                                               encoded, batch_size)))


def model_logps(model, encoded: Sequence[EncodedPair], pad_id: int, batch_size: int) -> BatchLogps:
    """Blocking `model_logps_events`."""
    return drain(model_logps_events(model, encoded, pad_id, batch_size))


def _encode(tokenizer, pairs, max_length):
    kept, skipped = [], []
    for line, pair in pairs:
        try:
            kept.append((line, encode_pair(tokenizer, pair, max_length)))
        except DataError as exc:
            skipped.append((line, str(exc)))
    return kept, skipped


def _load(ref: str, device, at: float):
    """Load `ref`, yielding its preparation as progress at `at`; return the LoadedModel."""
    from dpo_engine.models import load_model_events

    yield EvalProgress("load", at, f"Loading {ref}")
    return (yield from mapped(load_model_events(ref, device), lambda e: EvalProgress("load", at, e.message)))


def _scores(loaded, encoded, settings, what: str, span: tuple[float, float]):
    """Score the encoded pairs under `loaded`, yielding progress over `span` of the whole eval."""
    rows = [e for _, e in encoded]
    return (yield from mapped(
        model_logps_events(loaded.model, rows, loaded.tokenizer.pad_token_id, settings.batch_size),
        lambda done: EvalProgress("score", span[0] + (span[1] - span[0]) * done / len(rows),
                                  f"Scored {done}/{len(rows)} pairs under the {what}")))


def _score_policy(ref: str, pairs, settings, device, span: tuple[float, float]):
    """Load the policy, encode with its tokenizer and score; the model is released on return."""
    loaded = yield from _load(ref, device, span[0])
    encoded, rejected = _encode(loaded.tokenizer, pairs, settings.max_length)
    if not encoded:
        raise DataError("No pair left to score: " + "; ".join(f"line {ln}: {r}" for ln, r in rejected))
    logps = yield from _scores(loaded, encoded, settings, "policy", span)
    return logps, encoded, rejected


def _score_reference(ref: str, pairs, encoded, settings, device, span: tuple[float, float]):
    """Score the policy's encoding under the reference, which must tokenize the same way."""
    loaded = yield from _load(ref, device, span[0])
    line, first = encoded[0]
    pair = next(p for ln, p in pairs if ln == line)
    if encode_pair(loaded.tokenizer, pair, settings.max_length) != first:
        raise ConfigError(f"The reference {ref} tokenizes the pairs differently from the policy; "
                          "DPO compares log-probs of the same tokens, so both need one tokenizer.")
    return (yield from _scores(loaded, encoded, settings, "reference", span))


def scoring_choice(device, refs: Sequence[str]):
    """Where and in which precision to score: the plan's answer to "do fp32 weights of the
    largest of `refs` fit in the memory free there" (read from headers: no weights load)."""
    from dpo_engine.catalog.fit import memory_budget
    from dpo_engine.run_plan import plan_run

    parameters = max((_parameters(ref) for ref in refs), default=0)
    if not parameters:  # unknown size (a hub id): assume it fits, as a loaded model would tell
        return plan_run(choice=device).scoring_choice()
    free, _ = memory_budget(device.device)
    return plan_run(parameters=parameters, free_bytes=free, choice=device).scoring_choice()


def _parameters(ref: str) -> int:
    """The parameter count the catalog reads from `ref`'s headers; 0 where it cannot."""
    from dpo_engine.catalog.sources import default_entries, inspect_path

    entry = default_entries()[0] if ref == "default" else inspect_path(ref)
    return entry.parameters or 0 if entry.usable else 0


def eval_events(data, policy_ref: str, reference_ref: str | None, settings: EvalSettings,
                device=None) -> Generator[EvalProgress, None, dict]:
    """Score every pair of a JSONL file, yielding progress; return the report `dpo-engine eval --json`
    prints. Stopping at a yield is safe: nothing is written."""
    pairs, skipped = read_pairs_jsonl(data)
    if not pairs:
        raise DataError(f"{data} holds no preference pair." + (f" First problem: line {skipped[0][0]}: "
                                                                 f"{skipped[0][1]}" if skipped else ""))
    reference_ref = reference_ref or default_reference(policy_ref)
    device = scoring_choice(device if device is not None else pick_device(), (policy_ref, reference_ref))
    same = reference_ref == policy_ref
    policy, encoded, rejected = yield from _score_policy(policy_ref, pairs, settings, device,
                                                         (0.0, 1.0 if same else 0.5))
    if same:
        reference = policy  # same weights: one pass serves both
    else:
        reference = yield from _score_reference(reference_ref, pairs, encoded, settings, device, (0.5, 1.0))
    return _report(policy, reference, encoded, skipped + rejected, settings, policy_ref, reference_ref, device)


def eval_report(data, policy_ref: str, reference_ref: str | None, settings: EvalSettings, device=None,
                on_event: Callable[[EvalProgress], None] | None = None) -> dict:
    """Blocking `eval_events`: `on_event` (to show progress) sees every EvalProgress."""
    return drain(eval_events(data, policy_ref, reference_ref, settings, device), on_event)


def _report(policy: BatchLogps, reference: BatchLogps, encoded, skipped, settings: EvalSettings, policy_ref: str,
            reference_ref: str, device) -> dict:
    """The per-pair numbers and the metrics, under TRL's names."""
    params = LossParams(beta=settings.beta, label_smoothing=settings.label_smoothing)
    out = get_loss(settings.loss)(
        policy.chosen_logps, policy.rejected_logps, reference.chosen_logps, reference.rejected_logps,
        chosen_tokens=policy.chosen_tokens, rejected_tokens=policy.rejected_tokens, params=params)
    rows = zip(policy.chosen_logps.tolist(), policy.rejected_logps.tolist(), reference.chosen_logps.tolist(),
               reference.rejected_logps.tolist(), policy.chosen_tokens.tolist(), policy.rejected_tokens.tolist(),
               out.chosen_rewards.tolist(), out.rejected_rewards.tolist(), out.losses.tolist())
    keys = ("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps",
            "chosen_tokens", "rejected_tokens", "chosen_reward", "rejected_reward", "loss")
    return {
        "pairs": [dict(zip(keys, row)) for row in rows],
        "metrics": compute_metrics(out, policy.chosen_logps, policy.rejected_logps),
        "skipped": [{"line": ln, "reason": r} for ln, r in sorted(skipped)],
        "lines": [ln for ln, _ in encoded],  # not printed with --json; the summary names pairs by line
        "policy": policy_ref,
        "reference": reference_ref,
        "precision": {"device": device.device, "dtype": device.dtype, "reason": device.precision_reason},
    }


def _print_summary(report: dict, settings: EvalSettings) -> None:
    click.echo(f"policy {report['policy']}  reference {report['reference']}")
    click.echo(f"scored on {report['precision']['device']} in {report['precision']['dtype']} "
               f"({report['precision']['reason']})")
    click.echo(f"loss {settings.loss}, beta {settings.beta}: {len(report['pairs'])} pairs scored, "
               f"{len(report['skipped'])} skipped")
    click.echo(f"{'line':>6} {'tokens c/r':>11} {'reward c':>10} {'reward r':>10} {'margin':>9} {'loss':>9}")
    for line, p in zip(report["lines"], report["pairs"]):
        tokens = f"{p['chosen_tokens']}/{p['rejected_tokens']}"
        click.echo(f"{line:>6} {tokens:>11} {p['chosen_reward']:>10.4f} {p['rejected_reward']:>10.4f} "
                   f"{p['chosen_reward'] - p['rejected_reward']:>9.4f} {p['loss']:>9.4f}")
    for name, value in report["metrics"].items():
        click.echo(f"{name:>20}  {value:.6g}")
    for s in report["skipped"]:
        click.echo(f"skipped line {s['line']}: {s['reason']}")


@click.command("eval")
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="Preference pairs, JSONL.")
@click.option("--policy", "policy_ref", required=True, help="'default', a model folder, a .gguf or a hub id.")
@click.option("--reference", "reference_ref", default=None,
              help="Reference model; default: the one the policy was trained against "
                   "(its dpo_studio_run.json), else the policy.")
@click.option("--beta", default=0.1, show_default=True, type=float, help="KL strength (IPO's tau).")
@click.option("--loss", "loss_name", default="sigmoid", show_default=True, type=click.Choice(list(LOSSES)))
@click.option("--label-smoothing", default=0.0, show_default=True, type=float, help="Robust loss: flip rate.")
@click.option("--max-length", default=1024, show_default=True, type=int, help="Prompt + response tokens.")
@click.option("--batch-size", default=8, show_default=True, type=int, help="Pairs per forward pass.")
@click.option("--device", default=None, help=DEVICE_HELP)
@dtype_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a summary.")
@friendly_errors
def eval_cmd(data, policy_ref, reference_ref, beta, loss_name, label_smoothing, max_length, batch_size, device,
             dtype, as_json):
    """Score preference pairs: per-pair log-probs, rewards and loss, and TRL's metrics."""
    settings = EvalSettings(loss_name, beta, label_smoothing, max_length, batch_size)
    report = eval_report(data, policy_ref, reference_ref, settings, choose_device(device, dtype), progress_printer)
    if as_json:
        payload = {k: report[k] for k in ("pairs", "metrics", "skipped", "precision")}
        click.echo(json.dumps(payload))
    else:
        _print_summary(report, settings)
