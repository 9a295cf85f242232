"""The preference pair: the unit that flows from the store and from files into training.

A pair is either conversational (prompt = a list of chat messages; chosen and rejected =
one assistant message each, rendered with the model's chat template) or plain text
(prompt, chosen and rejected are raw strings, concatenated without a template), as in
TRL's "conversational" and "standard" preference formats.

`parse_preference_record` reads one JSON object in any accepted format:
  TRL standard          {"prompt": str, "chosen": str, "rejected": str}
  TRL conversational    {"prompt": [msg...], "chosen": [assistant msg], "rejected": [assistant msg]}
  TRL implicit prompt   {"chosen": [msg..., assistant], "rejected": [msg..., assistant]}
  OpenAI preference     {"input": {"messages": [msg...]}, "preferred_output": [assistant msg],
                         "non_preferred_output": [assistant msg]}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from dpo_engine.errors import DataError

ROLES = ("system", "user", "assistant", "tool")
MAX_FIELD_CHARS = 200_000  # a longer field is almost surely a broken file, not a response


@dataclass(frozen=True)
class PreferencePair:
    prompt: str | tuple[tuple[str, str], ...]  # plain text, or ((role, content), ...)
    chosen: str  # the preferred continuation (assistant content when conversational)
    rejected: str  # the dispreferred continuation
    # False for an answer cut off at the token cap: it is trained without an end-of-turn token,
    # so a cut-off loser does not teach "stop here is bad" (nor a cut-off winner "stop here").
    chosen_finished: bool = True
    rejected_finished: bool = True
    # How much this pair counts in the loss, relative to the others of a run (the trainer
    # rescales a run's weights to mean 1, so the learning rate keeps its meaning).
    weight: float = 1.0

    @property
    def conversational(self) -> bool:
        return not isinstance(self.prompt, str)

    @property
    def messages(self) -> list[dict]:
        """The prompt as chat messages (a plain prompt becomes one user message)."""
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return [{"role": r, "content": c} for r, c in self.prompt]

    @property
    def prompt_text(self) -> str:
        """The prompt for display: plain text, or the last user message."""
        if isinstance(self.prompt, str):
            return self.prompt
        users = [c for r, c in self.prompt if r == "user"]
        return users[-1] if users else self.prompt[-1][1]

    def content_hash(self) -> str:
        """Identity for duplicate detection: same prompt, chosen and rejected -> same hash."""
        blob = json.dumps([self.prompt, self.chosen, self.rejected], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def to_trl(self) -> dict:
        """TRL's conversational (or standard, for plain pairs) preference record."""
        if not self.conversational:
            return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        return {
            "prompt": self.messages,
            "chosen": [{"role": "assistant", "content": self.chosen}],
            "rejected": [{"role": "assistant", "content": self.rejected}],
        }


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{what} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{what} is empty")
    if len(value) > MAX_FIELD_CHARS:
        raise DataError(f"{what} is over-long ({len(value):,} characters; limit {MAX_FIELD_CHARS:,})")
    return value


def _messages(value: Any, what: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{what} must be a non-empty list of messages")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise DataError(f"{what}[{i}] must be an object with 'role' and 'content'")
        if msg["role"] not in ROLES:
            raise DataError(f"{what}[{i}] has unknown role {msg['role']!r}")
        out.append((msg["role"], _text(msg["content"], f"{what}[{i}].content")))
    return tuple(out)


def _assistant(value: Any, what: str) -> str:
    """An answer given as a string or as a one-message assistant list."""
    if isinstance(value, str):
        return _text(value, what)
    msgs = _messages(value, what)
    if len(msgs) != 1 or msgs[0][0] != "assistant":
        raise DataError(f"{what} must be exactly one assistant message")
    return msgs[0][1]


def _split_implicit(chosen: Any, rejected: Any) -> tuple[tuple, str, str]:
    c = _messages(chosen, "chosen")
    r = _messages(rejected, "rejected")
    if c[:-1] != r[:-1] or c[-1][0] != "assistant" or r[-1][0] != "assistant":
        raise DataError("chosen and rejected must share the prompt messages and end with an assistant message")
    if not c[:-1]:
        raise DataError("chosen and rejected hold no prompt messages")
    return c[:-1], c[-1][1], r[-1][1]


def parse_preference_record(obj: Any) -> PreferencePair:
    """One JSON object in any accepted format -> PreferencePair; DataError says why not."""
    if not isinstance(obj, dict):
        raise DataError(f"each line must be a JSON object, not {type(obj).__name__}")
    if "preferred_output" in obj or "non_preferred_output" in obj:  # OpenAI
        for key in ("input", "preferred_output", "non_preferred_output"):
            if key not in obj:
                raise DataError(f"missing key {key!r}")
        if not isinstance(obj["input"], dict) or "messages" not in obj["input"]:
            raise DataError("'input' must be an object with 'messages'")
        prompt = _messages(obj["input"]["messages"], "input.messages")
        chosen = _assistant(obj["preferred_output"], "preferred_output")
        rejected = _assistant(obj["non_preferred_output"], "non_preferred_output")
    else:
        for key in ("chosen", "rejected"):
            if key not in obj:
                raise DataError(f"missing key {key!r}")
        if "prompt" not in obj:
            if isinstance(obj["chosen"], str):
                raise DataError("missing key 'prompt'")
            prompt, chosen, rejected = _split_implicit(obj["chosen"], obj["rejected"])
        elif isinstance(obj["prompt"], str):
            prompt = _text(obj["prompt"], "prompt")
            if not isinstance(obj["chosen"], str) or not isinstance(obj["rejected"], str):
                raise DataError("with a text prompt, chosen and rejected must be strings")
            chosen, rejected = _text(obj["chosen"], "chosen"), _text(obj["rejected"], "rejected")
        else:
            prompt = _messages(obj["prompt"], "prompt")
            chosen = _assistant(obj["chosen"], "chosen")
            rejected = _assistant(obj["rejected"], "rejected")
    if chosen == rejected:
        raise DataError("chosen and rejected are identical")
    return PreferencePair(prompt, chosen, rejected)


def conversation(prompt: str | list[dict], chosen: str, rejected: str) -> PreferencePair:
    """Build a conversational pair from a prompt (text or messages) and two answers."""
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return PreferencePair(_messages(msgs, "prompt"), _text(chosen, "chosen"), _text(rejected, "rejected"))
