"""The starter prompts shipped in resources/: varied prompts to label with no data of one's own."""

from __future__ import annotations

from importlib import resources


def starter_prompts() -> list[str]:
    """The shipped starter prompts in file order (comments and blank lines dropped)."""
    text = resources.files("resources").joinpath("starter_prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
