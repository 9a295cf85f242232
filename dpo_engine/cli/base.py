"""What every `dpo-engine` command shares: the error wrapper, the progress line, option help.

Command modules import this and never `dpo_engine.cli.main`, which imports them: no cycle.
"""

from __future__ import annotations

import functools
import sys

import click

from dpo_engine.errors import DPOStudioError

DEVICE_HELP = "auto (default: CUDA, then MPS, then CPU), cuda, cuda:N, mps or cpu."
DTYPE_HELP = ("Precision: auto (default: bf16 where this hardware runs it faster, measured once per machine; "
              "else fp32; `dpo-engine device` says which and why), float32, bfloat16 or float16.")


def dtype_option(fn):
    """`--dtype auto|float32|bfloat16|float16`, next to `--device` on every command that loads a model."""
    from dpo_engine.devices import DTYPE_CHOICES

    return click.option("--dtype", default=None, type=click.Choice(DTYPE_CHOICES, case_sensitive=False),
                        help=DTYPE_HELP)(fn)


def choose_device(device: str | None, dtype: str | None):
    """`pick_device`, with its warning (a precision this hardware runs poorly) on stderr."""
    from dpo_engine.devices import pick_device

    choice = pick_device(device, dtype)
    if choice.warning:
        click.echo(f"Warning: {choice.warning}", err=True)
    return choice


def friendly_errors(fn):
    """Turn the engine's expected errors into a clean message and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DPOStudioError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)

    return wrapper


def progress_printer(event) -> None:
    click.echo(f"[{event.fraction:4.0%}] {event.message}", err=True)
