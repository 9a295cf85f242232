"""The trainer's glue to Hugging Face Accelerate, used only under `accelerate launch`.

`current()` looks at the launcher's environment once: with one process (the GUI, a plain
`dpo-engine train`, or a launch with one process) it returns LOCAL, whose methods are the
plain single-process operations (no accelerate import, no wrapper, no collective); with
WORLD_SIZE > 1 it builds one `Accelerator` (DDP, FSDP or DeepSpeed, from Accelerate's own
config) and returns a `Distributed` over it.

Data parallelism as the trainer does it:

    global micro-batch  = batch_size x processes pairs, cut from the same seeded,
                          length-bucketed order a single process with that batch uses;
    each rank           trains on its slice (`share`), so a global step sees exactly the
                          pairs of one process with batch_size x processes per micro-batch;
    loss per rank       = sum of its pair losses x processes / pairs in the global step, so
                          the averaged gradient equals the single-process one;
    metrics             pair-weighted sums, summed over ranks (`sum_values`): every rank
                          reports the same numbers;
    reference log-probs each rank scores pairs rank::processes, all gathered (`gather_scores`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from typing import Callable, Sequence

import torch


class Local:
    """One process: every operation is the plain one (nothing wrapped, nothing communicated)."""

    world = 1
    rank = 0
    is_main = True
    sharded = False  # parameters or optimizer state split across ranks (FSDP, DeepSpeed)
    device_name = None  # None: the trainer picks the device as usual

    def share(self, micro_batch: list[int]) -> tuple[list[int], int]:
        """(this rank's pairs of a global micro-batch, their loss weight)."""
        return micro_batch, 1

    def sync(self, model, last: bool):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm(self, model, params, max_norm: float) -> float:
        return torch.nn.utils.clip_grad_norm_(params, max_norm).item()

    def sum_values(self, values: dict[str, float]) -> dict[str, float]:
        return values

    def agree(self, flag: bool) -> bool:
        """True on every rank if it is True on any (stop requests, failures)."""
        return flag

    def from_main(self, compute: Callable[[], object]) -> object:
        return compute()

    def barrier(self) -> None:
        pass

    def prepare(self, model, optimizer, ctx, score):
        """(what training forwards go through, its optimizer, the step context).

        `score(model, pairs, ctx)` is the step's log-prob function (train.step.pair_logps), passed
        in so that this module never imports the step that imports it."""
        return model, optimizer, ctx

    def full_state_dict(self, scorer) -> dict | None:
        """The full weights, gathered, where they are sharded; None where the model holds them."""
        return None


LOCAL = Local()


class PairScorer(torch.nn.Module):
    """The policy behind a `forward(pairs)`, so DDP/FSDP/DeepSpeed see every training forward
    (our log-prob functions call the backbone and head directly, bypassing model.__call__)."""

    def __init__(self, model, ctx, score):
        super().__init__()
        self.model = model
        self._score = score
        self._ctx = ctx  # the context without a scorer: forward runs the plain computation
        lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._no_split_modules = getattr(lm, "_no_split_modules", None)  # FSDP's auto-wrap reads it

    def forward(self, pairs):
        return self._score(self.model, pairs, self._ctx)


class Distributed(Local):
    """Several processes under `accelerate launch`: one Accelerator, collectives over its group."""

    def __init__(self):
        from accelerate import Accelerator, DistributedType

        # Without a GPU, a multi-process launch is CPU data parallelism over gloo (accelerate
        # would otherwise make each process a world of its own).
        self.acc = Accelerator(cpu=not torch.cuda.is_available())
        self.world = self.acc.num_processes
        self.rank = self.acc.process_index
        self.is_main = self.acc.is_main_process
        self.sharded = self.acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        self.device_name = "cpu" if self.acc.device.type == "cpu" else str(self.acc.device)

    def share(self, micro_batch: list[int]) -> tuple[list[int], int]:
        mine = micro_batch[self.rank :: self.world]  # sorted by length: every rank gets similar lengths
        if mine:
            return mine, self.world
        # Fewer pairs than ranks (an epoch's last batch): run a pair with weight 0, because
        # every rank must make the same forwards and backwards for the gradient reduction.
        return micro_batch[:1], 0

    def sync(self, model, last: bool):
        self.acc.sync_gradients = last  # DeepSpeed steps at this boundary; DDP/FSDP reduce at it
        return contextlib.nullcontext() if last else self.acc.no_sync(model)

    def backward(self, loss: torch.Tensor) -> None:
        self.acc.backward(loss)

    def clip_grad_norm(self, model, params, max_norm: float) -> float:
        # DeepSpeed clips inside its step (its config's gradient_clipping) and reports the norm.
        norm = self.acc.clip_grad_norm_(model.parameters(), max_norm)
        return math.nan if norm is None else float(norm)

    def sum_values(self, values: dict[str, float]) -> dict[str, float]:
        names = sorted(values)
        summed = self.acc.reduce(torch.tensor([values[n] for n in names], dtype=torch.float64,
                                              device=self.acc.device), reduction="sum")
        return dict(zip(names, summed.tolist()))

    def agree(self, flag: bool) -> bool:
        return bool(self.acc.reduce(torch.tensor([float(flag)], device=self.acc.device), "sum").item())

    def from_main(self, compute: Callable[[], object]) -> object:
        from accelerate.utils import broadcast_object_list

        box = [compute() if self.is_main else None]
        return broadcast_object_list(box)[0]

    def barrier(self) -> None:
        self.acc.wait_for_everyone()

    def prepare(self, model, optimizer, ctx, score):
        from dataclasses import replace

        plugin = self.acc.state.deepspeed_plugin
        if plugin is not None and plugin.deepspeed_config.get("train_micro_batch_size_per_gpu") == "auto":
            # DeepSpeed wants a number but only checks and logs it: no dataloader is prepared here.
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 1
        # One call: DeepSpeed builds its engine from both; FSDP re-points the optimizer at its shards.
        scorer, optimizer = self.acc.prepare(PairScorer(model, ctx, score), optimizer)
        return scorer, optimizer, replace(ctx, scorer=scorer)

    def full_state_dict(self, scorer) -> dict | None:
        if not self.sharded:
            return None  # DDP and ZeRO-1/2 keep full weights on every rank
        state = self.acc.get_state_dict(scorer)  # a collective: every rank calls it
        return {k.removeprefix("model."): v for k, v in state.items()} if state else state


def gather_scores(dist: Local, mine: Sequence[int], part: tuple[torch.Tensor, torch.Tensor],
                  n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each rank's scores of pairs `mine` -> every pair's, each (n,), on every rank."""
    from accelerate.utils import gather_object

    chosen, rejected = torch.empty(n), torch.empty(n)
    for index, c, r in gather_object([(list(mine), part[0].tolist(), part[1].tolist())]):
        chosen[index], rejected[index] = torch.tensor(c), torch.tensor(r)
    return chosen, rejected


@functools.cache
def current() -> Local:
    """LOCAL in a single process; the process group's Distributed under a multi-process launch."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return LOCAL
    return Distributed()
