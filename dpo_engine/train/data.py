"""The run's data: split, encode (refusing unusable data before any model loads), and order.

Data order is a pure function of (seed, epoch), so a checkpoint only needs the position
(epoch, step within it) to continue on exactly the batches the uninterrupted run saw.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Sequence

from dpo_engine.encoding import EncodedPair, encode_pairs
from dpo_engine.errors import DataError
from dpo_engine.pairs import PreferencePair
from dpo_engine.train.config import MIN_TRAIN_PAIRS, TrainConfig

BUCKET_BATCHES = 16  # batches per length bucket: long enough to sort well, short enough to stay random


@dataclass(frozen=True)
class RunData:
    train: list[EncodedPair]
    train_index: list[int]  # each train pair's index in the pairs given to train(), for messages
    eval: list[EncodedPair]
    eval_index: list[int]  # index in eval_pairs if given, else in the training pairs
    skipped: list[tuple[int, str]]  # (index, reason) of pairs that cannot be trained on
    train_weights: tuple[float, ...] = ()  # each train pair's loss weight, mean 1 (empty: all 1)

    @property
    def all_pairs(self) -> list[EncodedPair]:
        """Train then eval: the order of the reference log-prob cache."""
        return self.train + self.eval

    def fingerprint(self) -> str:
        """Identity of the encoded data (token ids of every pair, split included)."""
        h = hashlib.sha256()
        for part in (self.train, self.eval):
            h.update(b"|split|")
            for e in part:
                h.update(repr((e.prompt_ids, e.chosen_ids, e.rejected_ids)).encode())
        if self.train_weights:
            h.update(repr(self.train_weights).encode())
        return h.hexdigest()


def split_eval(n: int, fraction: float, seed: int,
               groups: Sequence[Sequence[int]] | None = None) -> tuple[list[int], list[int]]:
    """(train indices, eval indices) of n pairs; eval gets round(n * fraction), at least 1
    if fraction > 0, unless that would leave fewer than MIN_TRAIN_PAIRS to train on.

    `groups` (pair indices sharing a prompt, covering all n) keeps each group on one side:
    whole groups are held out until they reach that count. Without it every pair is its own
    group (the same split as groups of one).
    """
    groups = [[i] for i in range(n)] if groups is None else [list(g) for g in groups]
    assert sorted(i for g in groups for i in g) == list(range(n))
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    target = max(1, round(n * fraction)) if fraction > 0 else 0
    held: list[int] = []
    for g in order:
        if len(held) >= target:
            break
        held += groups[g]
    if n - len(held) < MIN_TRAIN_PAIRS:
        held = []
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], sorted(held)


def pair_groups(pairs: Sequence[PreferencePair]) -> list[list[int]]:
    """Pair indices grouped by identical prompt, in first-appearance order."""
    groups: dict = {}
    for i, p in enumerate(pairs):
        groups.setdefault(p.prompt, []).append(i)
    return list(groups.values())


def _reasons(skipped: list[tuple[int, str]], limit: int = 3) -> str:
    shown = "; ".join(f"pair #{i}: {why}" for i, why in skipped[:limit])
    more = f" (and {len(skipped) - limit} more)" if len(skipped) > limit else ""
    return shown + more


def prepare_data(
    tokenizer, pairs: Sequence[PreferencePair], eval_pairs: Sequence[PreferencePair] | None, config: TrainConfig
) -> RunData:
    """Encode and split; DataError if too few pairs are left to train on."""
    if eval_pairs is None:
        groups = pair_groups(pairs) if config.group_answers else None  # a ranking never on both sides
        train_idx, eval_idx = split_eval(len(pairs), config.eval_fraction, config.seed, groups)
        eval_source = pairs
    else:
        train_idx, eval_idx, eval_source = list(range(len(pairs))), list(range(len(eval_pairs))), eval_pairs
    kept, skipped = encode_pairs(tokenizer, [pairs[i] for i in train_idx], config.max_length)
    skipped = [(train_idx[j], why) for j, why in skipped]
    if len(kept) < MIN_TRAIN_PAIRS:
        detail = f" Unusable: {_reasons(skipped)}." if skipped else ""
        raise DataError(
            f"Only {len(kept)} usable training pair(s) of {len(pairs)}; DPO needs at least {MIN_TRAIN_PAIRS}."
            f"{detail} Label more pairs, or raise max_length if prompts are being cut away."
        )
    eval_kept, eval_skipped = encode_pairs(tokenizer, [eval_source[i] for i in eval_idx], config.max_length)
    train_index = [train_idx[j] for j, _ in kept]
    return RunData(
        train=[e for _, e in kept],
        train_index=train_index,
        eval=[e for _, e in eval_kept],
        eval_index=[eval_idx[j] for j, _ in eval_kept],
        skipped=skipped + [(eval_idx[j], f"(eval) {why}") for j, why in eval_skipped],
        train_weights=loss_weights([pairs[i].weight for i in train_index]),
    )


def loss_weights(weights: Sequence[float]) -> tuple[float, ...]:
    """Pair weights rescaled to mean 1 (so the learning rate means the same with or without
    them); () when all are equal, the plain mean. DataError for a weight that is not > 0."""
    bad = next((i for i, w in enumerate(weights) if not (isinstance(w, (int, float)) and 0 < w < math.inf)), None)
    if bad is not None:
        raise DataError(f"training pair #{bad} has weight {weights[bad]!r}; a weight must be a positive number")
    if not weights or len(set(weights)) == 1:
        return ()
    mean = sum(weights) / len(weights)
    return tuple(w / mean for w in weights)


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  groups: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
    """Length-bucketed micro-batches for one epoch, a pure function of (seed, epoch).

    Shuffle, cut into buckets of BUCKET_BATCHES batches, sort each bucket by length (so a
    batch holds pairs of similar length and little padding), then shuffle the batches.

    `groups` (train-pair indices sharing a prompt, each in its sharing order: `train.groups.
    prompt_groups`) are shuffled and sorted as units and laid out whole, one after another,
    before the cut into batches of batch_size pairs: a micro-batch then holds few prompts and
    answers (a ranking's pairs side by side), while the pairs per micro-batch, the batches
    per epoch and so the steps stay those of the pairwise order. Groups of one pair give
    exactly the pairwise batches.
    """
    groups = [[i] for i in range(len(lengths))] if groups is None else groups
    rng = random.Random(f"{seed}/{epoch}")
    order = list(range(len(groups)))
    rng.shuffle(order)
    bucket = batch_size * BUCKET_BATCHES
    longest = [max(lengths[i] for i in g) for g in groups]
    flat: list[int] = []  # buckets of whole groups, each sorted by length, one after another
    chunk: list[int] = []
    size = 0
    for pos, g in enumerate(order):
        chunk.append(g)
        size += len(groups[g])
        if size >= bucket or pos == len(order) - 1:
            flat += [i for h in sorted(chunk, key=lambda h: -longest[h]) for i in groups[h]]
            chunk, size = [], 0
    # cut as one sequence: every batch but the last is full (buckets of single pairs are a
    # whole number of batches, so that is the cut per bucket)
    batches = [flat[i : i + batch_size] for i in range(0, len(flat), batch_size)]
    rng.shuffle(batches)
    return batches


def steps_per_epoch(n_pairs: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps per epoch; the last step of an epoch may have fewer micro-batches."""
    return math.ceil(math.ceil(n_pairs / batch_size) / grad_accum)


def step_batches(lengths: Sequence[int], config: TrainConfig, epoch: int, step_in_epoch: int,
                 processes: int = 1, groups: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
    """The micro-batches (train-pair indices) of one optimizer step.

    With several processes these are the global micro-batches of batch_size x processes
    pairs, the very ones one process with that batch size trains on; each rank takes a share.
    """
    batches = epoch_batches(lengths, config.batch_size * processes, config.seed, epoch, groups)
    start = step_in_epoch * config.grad_accum
    return batches[start : start + config.grad_accum]
