"""What every `dpo-engine` command shares: the error wrapper, the progress line, option help.

Command modules import this and never `dpo_engine.cli.main`, which imports them: no cycle.
"""

from __future__ import annotations

import functools
import sys

import click

from dpo_engine.errors import DPOStudioError

DEVICE_HELP = "auto (default: CUDA, then MPS, then CPU), cuda, cuda:N, mps or cpu."


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
