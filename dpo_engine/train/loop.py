"""DPO training as a generator of events, and a blocking helper on top.

    for event in train(config, pairs, eval_pairs, stop=threading.Event()):
        ...   # LogLine, ReferenceProgress, StepEvent, EvalEvent, then one TrainSummary

Order of work: encode the data (refusing unusable data before any model loads) ->
reference log-probs once (cache, or a separate reference model loaded and freed, or the
policy itself / with its adapter disabled) -> the loop. Every `yield` inside the loop
comes after an optimizer step, where stopping is safe; checkpoints are written by the
loop itself, never in a `finally`.

Setup errors (bad config, unusable data, missing model) raise DPOStudioError from the
first `next()`; failures during training (non-finite loss, out of memory, weights that
diverge: `train.divergence`) end the run with a TrainSummary(status="failed", reason=...)
and leave the last good checkpoint. A stop is honoured between steps and between the
reference pass's batches (no checkpoint then: no step was trained; the scores are cached).
"""

from __future__ import annotations

import functools
import gc
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence, Union

import torch

from dpo_engine.atomic import find_checkpoint, read_manifest, write_checkpoint
from dpo_engine.attention import use_fp32_attention
from dpo_engine.train import distributed
from dpo_engine.train.checkpoints import check_output_dir, load_trainer_state, read_run_file, save_trainer_state
from dpo_engine.errors import TrainingError
from dpo_engine.models import load_model, load_tokenizer, resolve_model_ref
from dpo_engine.pairs import PreferencePair
from dpo_engine.iters import mapped
from dpo_engine.train.reference import (ReferenceScores, cache_path, compute_reference, read_cache,
                                         reference_fingerprint, weights_identity, write_cache)
from dpo_engine.train.config import TrainConfig
from dpo_engine.train.divergence import WeightWatch, divergence_error
from dpo_engine.train.data import RunData, prepare_data, step_batches, steps_per_epoch
from dpo_engine.train.events import (EvalEvent, LogLine, PrecisionChosen, ReferenceProgress, StepEvent, TrainSummary,
                                     metric_fields)
from dpo_engine.train.groups import prompt_groups
from dpo_engine.train.model import load_policy, run_info, trainable_parameters, training_plan, write_model_files
from dpo_engine.train.step import StepContext, heldout_metrics, pair_logps, pair_tokens, run_step

TrainEvent = Union[LogLine, PrecisionChosen, ReferenceProgress, StepEvent, EvalEvent, TrainSummary]
StopFlag = Union["threading.Event", Callable[[], bool], None]  # noqa: F821  (anything with is_set())
OOM_HINT = ("Out of memory. Try a smaller batch size (--batch-size, with more --grad-accum to keep the "
            "effective batch), a shorter --max-length, LoRA (--lora) or gradient checkpointing.")


@dataclass
class _Run:
    """The loop's mutable state (owned by one generator, never shared)."""

    config: TrainConfig
    data: RunData
    loaded: object  # LoadedModel of the policy
    ctx: StepContext
    dist: distributed.Local  # LOCAL in one process; the Accelerate glue under `accelerate launch`
    scorer: object  # what training forwards go through: the model, or its DDP/FSDP/DeepSpeed wrapper
    optimizer: torch.optim.Optimizer
    scheduler: object
    ref: tuple[torch.Tensor, torch.Tensor]  # reference log-probs of data.all_pairs, each (N,)
    base_ref: str
    reference_ref: str
    total_steps: int
    per_epoch: int
    precision: dict  # PrecisionChosen.record: what the checkpoint's run file says ran
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    checkpoint: str | None = None
    tokens: int = 0  # trained tokens this session
    step_seconds: float = 0.0  # time spent in steps this session
    loop_start: float = field(default_factory=time.perf_counter)
    first_step: int = 0  # the step this session started from (resume)
    last_loss: float | None = None
    watch: WeightWatch | None = None  # the weights' norm at this session's start (`train.divergence`)

    @functools.cached_property
    def weights(self) -> torch.Tensor | None:
        """The train pairs' loss weights (mean 1), or None when all count the same."""
        return torch.tensor(self.data.train_weights) if self.data.train_weights else None

    @functools.cached_property
    def groups(self) -> list[list[int]] | None:
        """The train pairs by prompt (`train.groups.prompt_groups`) when answers are grouped."""
        return prompt_groups(self.data.train) if self.config.group_answers else None


def _stop_requested(stop: StopFlag) -> bool:
    if stop is None:
        return False
    return bool(stop.is_set() if hasattr(stop, "is_set") else stop())


def load_run_config(folder: str | Path, **overrides) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with, with `overrides` (e.g. output_dir, max_steps)."""
    info = read_run_file(folder)
    if "config" not in info:
        raise TrainingError(f"{folder} is not a DPO Studio checkpoint (no dpo_studio_run.json with a config).")
    return replace(TrainConfig.from_dict(info["config"]), **overrides)


# --------------------------------------------------------------------------- setup


def _resume_folder(config: TrainConfig, resume_from) -> Path | None:
    if resume_from is None:
        check_output_dir(config.output_dir, resume=False)
        return None
    folder = find_checkpoint(resume_from)
    if folder is None:
        raise TrainingError(f"No complete checkpoint at {resume_from} to resume from.")
    same = Path(config.output_dir).absolute() == folder.absolute()
    check_output_dir(config.output_dir, resume=same)
    return folder


def _score(model, pairs, ctx, batch: int, dist, start: ReferenceScores | None, fingerprint: str) -> Iterator:
    """compute_reference over every pair (a True sent to a progress event stops it: `_setup_or_stop`);
    under accelerate each rank scores its share, then all gather, and a stop waits for the loop's
    first check (the ranks' shares end at different batches: stopping one alone would hang the gather)
    and a stopped pass's `start` is not used (it is scored whole). A single process keeps its part
    in the cache as it goes, so a killed pass is continued too."""
    if dist.world == 1:
        keep = functools.partial(write_cache, fingerprint)
        return (yield from compute_reference(model, pairs, ctx, batch, start, keep))
    mine = range(dist.rank, len(pairs), dist.world)
    part = yield from mapped(compute_reference(model, [pairs[i] for i in mine], ctx, batch), lambda e: e)
    chosen, rejected = distributed.gather_scores(dist, mine, part[:2], len(pairs))
    return ReferenceScores(chosen, rejected, torch.ones(len(pairs), dtype=torch.bool))


def _cached_reference(fingerprint: str, n: int, dist) -> Iterator:
    """Yield what the cache holds; return its verified scores (complete or a stopped pass's part) or None."""
    scores, problem = dist.from_main(lambda: read_cache(fingerprint, n))
    if problem:
        yield LogLine(f"The cached reference log-probs {cache_path(fingerprint)} {problem}: scoring the pairs "
                      "again.", "warning")
    if scores is not None and scores.complete:
        yield ReferenceProgress(n, n, cached=True)
    elif scores is not None:
        yield LogLine(f"Continuing the reference pass stopped earlier: {int(scores.done.sum())} of {n} pairs "
                      "were scored")
    return scores


def _reference(config, data, ctx, device, precision, base_ref, reference_ref, resume, dist, tokenizer,
               fp32_attention: bool) -> Iterator:
    """Yield progress; return (ref log-probs, the policy LoadedModel), or (None, None) when a stop
    was sent during the pass (what it scored is cached, and the next run continues from it).
    `fp32_attention`: the reference and the policy run attention in fp32 (`dpo_engine.attention`)."""
    pairs = data.all_pairs
    fingerprint = reference_fingerprint(weights_identity(resolve_model_ref(reference_ref)), pairs,
                                        config.max_length, precision)
    batch = max(2, 2 * config.batch_size)  # no activations kept: twice the training batch fits
    ref = yield from _cached_reference(fingerprint, len(pairs), dist)
    read_whole = _complete(ref)  # a complete verified cache: nothing to score, nothing to write back
    policy_is_reference = reference_ref == base_ref and (resume is None or config.lora is not None)
    if not _complete(ref) and not policy_is_reference:
        yield LogLine(f"Scoring {len(pairs)} pairs with the reference model {reference_ref}")
        reference = load_model(reference_ref, device)
        if fp32_attention:
            use_fp32_attention(reference.model)
        ref = yield from _score(reference.model, pairs, ctx, batch, dist, ref, fingerprint)
        del reference
        gc.collect()  # free it before the policy loads: one model in memory at a time
    loaded = None
    if _complete(ref) or policy_is_reference:  # else the reference model's pass was stopped
        loaded = load_policy(config, device, resume, base_ref, tokenizer)
        if fp32_attention:
            use_fp32_attention(loaded.model)
        if not _complete(ref):
            yield LogLine(f"Scoring {len(pairs)} pairs with the reference (the starting model)")
            ref = yield from _score(loaded.model, pairs, ctx, batch, dist, ref, fingerprint)
    if dist.is_main and not read_whole:
        write_cache(fingerprint, ref)
    if not ref.complete:
        yield LogLine(f"Stop requested: the reference pass stopped at {int(ref.done.sum())} of {len(pairs)} pairs; "
                      "what it scored is kept, and the next run with these pairs continues from there")
        return None, None
    return (ref.chosen, ref.rejected), loaded


def _complete(ref: ReferenceScores | None) -> bool:
    return ref is not None and ref.complete


def _optimizer(config: TrainConfig, model, total_steps: int, fused: bool = True):
    """AdamW and the learning-rate schedule. Fused AdamW (one kernel over all parameters, as
    TRL's default `adamw_torch_fused`): on this 2-core CPU the optimizer step of the default
    model took 0.13 s instead of 0.53 s, ~7% of a 2-pair step (bench/README.md, "Training
    throughput"). Not under FSDP/DeepSpeed, which re-shard the parameters after this."""
    from transformers import get_scheduler

    params = trainable_parameters(model)
    fused = fused and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)
    warmup = config.warmup_steps if config.warmup_steps is not None else round(config.warmup_ratio * total_steps)
    name = "constant_with_warmup" if config.schedule == "constant" else config.schedule
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=min(warmup, total_steps),
                              num_training_steps=total_steps)
    return optimizer, scheduler


def _data_lines(data: RunData) -> Iterator[LogLine]:
    """What the run trains on, and the first 20 pairs it skipped with why."""
    yield LogLine(f"{len(data.train)} training pairs, {len(data.eval)} held out for eval"
                  + (f", {len(data.skipped)} skipped" if data.skipped else ""))
    for index, why in data.skipped[:20]:
        yield LogLine(f"Skipped pair #{index}: {why}", "warning")


def _setup(config: TrainConfig, pairs, eval_pairs, resume_from, dist) -> Iterator:
    """Yield setup events; return the _Run."""
    resume = dist.from_main(lambda: _resume_folder(config, resume_from))  # it may repair a folder: once
    if not dist.is_main:
        _resume_folder(config, resume_from)  # the same checks (and errors) on every rank
    base_ref = config.model
    reference_ref = config.reference or base_ref
    tokenizer = load_tokenizer(resolve_model_ref(str(resume) if resume else base_ref))
    data = prepare_data(tokenizer, pairs, eval_pairs, config)  # refuses bad data before any model loads
    yield from _data_lines(data)
    ran = (read_run_file(resume).get("precision") or {}).get("dtype") if resume is not None else None
    plan = training_plan(config, dist.device_name, ran)  # device, precisions, base: decided once
    device, compute = plan.weights_choice(), plan.compute_choice()
    share = config.share_prompt and not config.gradient_checkpointing  # the KV cache is off under checkpointing
    ctx = StepContext(config.loss, config.loss_params, tokenizer.pad_token_id, device.torch_device, share,
                      compute.autocast, group_answers=config.group_answers)
    fp32_attention = plan.attention != plan.compute  # the model's own attention (`dpo_engine.attention`)
    precision = PrecisionChosen(plan.device, plan.compute, plan.compute != "float32", plan.compute_reason)
    yield LogLine(f"Training on {plan.describe()}" + (f", {dist.world} processes" if dist.world > 1 else ""))
    if plan.warning:
        yield LogLine(plan.warning, "warning")
    yield precision
    key = plan.key  # part of the reference cache key: scores differ with the precision, the base and attention
    ref, loaded = yield from _reference(config, data, ctx, device, key, base_ref, reference_ref, resume, dist,
                                        tokenizer, fp32_attention)
    if ref is None:
        return None  # stopped during the reference pass
    if fp32_attention and use_fp32_attention(loaded.model):  # True where the model runs SDPA
        yield LogLine("Attention runs in fp32: the CPU's bf16 attention kernels are slower")
    per_epoch = steps_per_epoch(len(data.train), config.batch_size * dist.world, config.grad_accum)
    total = config.max_steps or config.epochs * per_epoch
    optimizer, scheduler = _optimizer(config, loaded.model, total, fused=not dist.sharded)
    scorer, optimizer, ctx = dist.prepare(loaded.model, optimizer, ctx, pair_logps)
    run = _Run(config, data, loaded, ctx, dist, scorer, optimizer, scheduler, ref, base_ref, reference_ref, total,
               per_epoch, precision.record)
    if resume is not None:
        _restore(run, resume)
        yield LogLine(f"Resumed from {resume} at step {run.step} of {total}")
    return run


def _restore(run: _Run, folder: Path) -> None:
    position = load_trainer_state(folder, run.optimizer, run.scheduler)
    if position.get("data") != run.data.fingerprint():
        raise TrainingError(f"The pairs differ from those the run in {folder} was trained on, so it cannot "
                            "continue exactly: resume with the same data, or start a new run.")
    run.step, run.epoch, run.step_in_epoch = position["step"], position["epoch"], position["step_in_epoch"]
    run.first_step = run.step
    run.checkpoint = str(folder)


# --------------------------------------------------------------------------- the loop


def _save(run: _Run, status: str) -> str:
    """Write a checkpoint on the main process (the others wait); return its folder."""
    state = run.dist.full_state_dict(run.scorer)  # gathers sharded weights: every rank takes part
    run.checkpoint = _save_checkpoint(run, status, state) if run.dist.is_main else None
    run.dist.barrier()
    run.checkpoint = str(Path(run.config.output_dir).absolute())  # where the main process wrote it
    return run.checkpoint


def _save_checkpoint(run: _Run, status: str, state: dict | None) -> str:
    model, tokenizer = run.loaded.model, run.loaded.tokenizer
    # Sharded moments are not gathered; a finished run is never resumed, so its moments (twice
    # the model's size with AdamW: ~1 GB for SmolLM2-135M) are not kept either.
    optimizer = None if run.dist.sharded or status == "finished" else run.optimizer
    info = run_info(run.config, run.base_ref, run.reference_ref, run.step, run.total_steps, status, run.precision)
    position = {"step": run.step, "epoch": run.epoch, "step_in_epoch": run.step_in_epoch,
                "data": run.data.fingerprint()}

    def write(folder: Path) -> None:
        write_model_files(folder, model, tokenizer, info, state)
        save_trainer_state(folder, optimizer, run.scheduler, position)

    return str(write_checkpoint(run.config.output_dir, write, {"step": run.step, "status": status}))


def _one_step(run: _Run) -> StepEvent:
    """Train one optimizer step and advance the data position."""
    c, data = run.config, run.data
    lengths = [p.length for p in data.train]
    batches = step_batches(lengths, c, run.epoch, run.step_in_epoch, run.dist.world, run.groups)
    lr = run.optimizer.param_groups[0]["lr"]
    started = time.perf_counter()
    metrics, grad_norm = run_step(run.scorer, run.optimizer, batches, data.train, run.ref, run.ctx,
                                  c.max_grad_norm, run.step + 1, data.train_index, run.dist, run.weights)
    growth = run.watch.diverged()
    if run.dist.agree(growth is not None):  # FSDP: each rank watches its shard; all stop together
        raise divergence_error(run.step + 1, growth if growth is not None else math.inf, lr)
    run.scheduler.step()
    seconds = time.perf_counter() - started
    tokens = pair_tokens([data.train[i] for mb in batches for i in mb])
    run.tokens, run.step_seconds = run.tokens + tokens, run.step_seconds + seconds
    run.step, run.step_in_epoch = run.step + 1, run.step_in_epoch + 1
    if run.step_in_epoch == run.per_epoch:
        run.epoch, run.step_in_epoch = run.epoch + 1, 0
    run.last_loss = metrics["loss"]
    elapsed = time.perf_counter() - run.loop_start
    eta = elapsed / (run.step - run.first_step) * (run.total_steps - run.step)
    return StepEvent(step=run.step, total_steps=run.total_steps, epoch=run.epoch + run.step_in_epoch / run.per_epoch,
                     grad_norm=grad_norm, learning_rate=lr, tokens_per_s=tokens / seconds, elapsed=elapsed, eta=eta,
                     **metric_fields(metrics))


def _eval_event(run: _Run) -> EvalEvent:
    n = len(run.data.train)
    ref = (run.ref[0][n:], run.ref[1][n:])
    metrics = heldout_metrics(run.loaded.model, run.data.eval, ref, run.ctx, max(2, 2 * run.config.batch_size))
    return EvalEvent(step=run.step, num_pairs=len(run.data.eval), **metric_fields(metrics))


def _due(step: int, every: int, total: int) -> bool:
    return every > 0 and step % every == 0 and step < total


def _summary(run: _Run, status: str, started: float, reason: str = "") -> TrainSummary:
    rate = run.tokens / run.step_seconds if run.step_seconds else 0.0
    return TrainSummary(status, run.step, run.total_steps, time.perf_counter() - started, run.checkpoint,
                        reason, rate, run.last_loss)


def _is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    text = str(exc).lower()
    return isinstance(exc, oom) or "out of memory" in text or "can't allocate memory" in text


def _loop(run: _Run, stop: StopFlag, started: float) -> Iterator[TrainEvent]:
    run.loop_start = time.perf_counter()
    run.watch = WeightWatch.of(run.optimizer)
    while run.step < run.total_steps:
        if run.dist.agree(_stop_requested(stop)):  # every rank stops at the same step
            yield LogLine(f"Stop requested: saving step {run.step} to {_save(run, 'stopped')}")
            yield _summary(run, "stopped", started, "stopped on request")
            return
        try:
            event = _one_step(run)
        except TrainingError as exc:
            yield _summary(run, "failed", started, str(exc))
            return
        except RuntimeError as exc:
            if not _is_oom(exc):
                raise
            yield _summary(run, "failed", started, f"Step {run.step + 1}: {OOM_HINT}")
            return
        yield event
        if run.data.eval and _due(run.step, run.config.eval_every, run.total_steps):
            yield _eval_event(run)
        if _due(run.step, run.config.save_every, run.total_steps):
            yield LogLine(f"Checkpoint at step {run.step}: {_save(run, 'running')}")
    if run.data.eval:
        yield _eval_event(run)
    yield LogLine(f"Saved the trained model to {_save(run, 'finished')}")
    yield _summary(run, "finished", started)


def train(config: TrainConfig, pairs: Sequence[PreferencePair], eval_pairs: Sequence[PreferencePair] | None = None,
          stop: StopFlag = None, resume_from: str | Path | None = None) -> Iterator[TrainEvent]:
    """Train the policy with DPO; yield events, ending with exactly one TrainSummary.

    Args:
        config: the run's settings (config.model is the base; its weights start the policy).
        pairs: training pairs; `config.eval_fraction` of them is held out unless eval_pairs is given.
        eval_pairs: held-out pairs, scored every `config.eval_every` steps and at the end.
        stop: a threading.Event (or a callable returning bool) checked between steps; when set,
            the run saves a checkpoint and ends with status "stopped". Also checked between the
            reference pass's batches: the run then ends "stopped" at step 0 with no new checkpoint.
        resume_from: a checkpoint folder whose weights, optimizer, scheduler, RNG and data
            position continue exactly (pass the config it was trained with: `load_run_config`).
    """
    started = time.perf_counter()
    run = yield from _setup_or_stop(_setup(config, pairs, eval_pairs, resume_from, distributed.current()), stop)
    if run is None:
        yield _stopped_before_training(resume_from, started)
        return
    yield from _loop(run, stop, started)


def _setup_or_stop(setup: Iterator, stop: StopFlag) -> Iterator:
    """`yield from setup`, except that after a reference-pass progress event with a stop requested
    it sends True (`reference.compute_reference` stops there, within one batch); return what
    `setup` returns (None when the pass was stopped)."""
    sending = None
    while True:
        try:
            event = setup.send(sending)
        except StopIteration as end:
            return end.value
        yield event
        stopping = isinstance(event, ReferenceProgress) and not event.cached and _stop_requested(stop)
        sending = True if stopping else None  # send(None) is next()


def _stopped_before_training(resume_from, started: float) -> TrainSummary:
    """No step was trained: nothing new is saved; a resumed run's checkpoint is still its last good one."""
    folder = find_checkpoint(resume_from) if resume_from is not None else None
    step = (read_manifest(folder) or {}).get("step", 0) if folder is not None else 0
    return TrainSummary("stopped", step, 0, time.perf_counter() - started,
                        str(folder.absolute()) if folder is not None else None,
                        "stopped on request during the reference pass (what it scored is cached)")


def run_training(config: TrainConfig, pairs: Sequence[PreferencePair],
                 eval_pairs: Sequence[PreferencePair] | None = None, stop: StopFlag = None,
                 resume_from: str | Path | None = None,
                 on_event: Callable[[TrainEvent], None] | None = None) -> TrainSummary:
    """Blocking `train()`: call `on_event` for every event; return the TrainSummary."""
    summary = None
    for event in train(config, pairs, eval_pairs, stop, resume_from):
        if on_event is not None:
            on_event(event)
        if isinstance(event, TrainSummary):
            summary = event
    assert summary is not None, "train() always ends with a TrainSummary"
    return summary
