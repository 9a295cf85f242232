"""`dpo-engine`: the engine's command line, over the same functions the GUI uses.

Expected failures (DPOStudioError) print their message and exit with status 1; a
traceback means a bug.
"""

from __future__ import annotations

import json

import click

from dpo_engine.cli.base import DEVICE_HELP, choose_device, dtype_option, friendly_errors, progress_printer
from dpo_engine.cli.data import export_cmd, import_cmd, stats_cmd
from dpo_engine.cli.eval import eval_cmd
from dpo_engine.cli.export import export_model_cmd
from dpo_engine.cli.models import models_cmd
from dpo_engine.cli.train import train_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dpo-studio")
def main():
    """DPO Studio engine: prepare models, generate, import, evaluate and train."""
    from dpo_engine._compat import quiet_transformers

    quiet_transformers()


@main.command("prepare-model")
@click.option("--force", is_flag=True, help="Convert again even if the cache holds the model.")
@friendly_errors
def prepare_model_cmd(force: bool):
    """Download and convert the default model (SmolLM2-135M-Instruct) once."""
    from dpo_engine.models import prepare_default_model_events

    for event in prepare_default_model_events(force=force):
        progress_printer(event)


@main.command("device")
@click.option("--device", default=None, help=DEVICE_HELP)
@dtype_option
@friendly_errors
def device_cmd(device, dtype):
    """Show the device and precision that would be used, and why."""
    choice = choose_device(device, dtype)
    click.echo(f"device:    {choice.describe().rsplit(', ', 1)[0]} ({choice.reason})")
    click.echo(f"precision: {choice.dtype} ({choice.precision_reason})")


@main.command("generate")
@click.option("--model", "model_ref", default="default", show_default=True,
              help="'default', a local model folder, a .gguf file or a hub id.")
@click.option("--prompt", required=True, help="The user message to answer.")
@click.option("-n", "n", default=1, show_default=True, type=click.IntRange(1, 64), help="Number of answers.")
@click.option("--max-new-tokens", default=200, show_default=True, type=click.IntRange(1, 8192))
@click.option("--temperature", default=0.8, show_default=True, type=click.FloatRange(0))
@click.option("--top-p", default=0.95, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option("--seed", default=None, type=int, help="Fix the sampling seed for reproducible answers.")
@click.option("--device", default=None, help=DEVICE_HELP)
@dtype_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@friendly_errors
def generate_cmd(model_ref, prompt, n, max_new_tokens, temperature, top_p, seed, device, dtype, as_json):
    """Sample N answers to PROMPT with the model's chat template."""
    from dpo_engine.generate import GenerationSettings, generate
    from dpo_engine.iters import drain
    from dpo_engine.models import load_model_events

    settings = GenerationSettings(max_new_tokens, temperature, top_p, seed)
    loaded = drain(load_model_events(model_ref, choose_device(device, dtype)), progress_printer)
    result = generate(loaded.model, loaded.tokenizer, prompt, n, settings)
    if as_json:
        payload = {"model": loaded.name, "device": loaded.device.describe(), "responses": result.texts}
        click.echo(json.dumps(payload, ensure_ascii=False))
        return
    click.echo(f"# {loaded.name} on {loaded.device.describe()}", err=True)
    for i, text in enumerate(result.texts, 1):
        click.echo(f"--- answer {i} ({result.token_counts[i - 1]} tokens)")
        click.echo(text)


main.add_command(eval_cmd, "eval")
main.add_command(import_cmd, "import")
main.add_command(export_cmd, "export")
main.add_command(export_model_cmd, "export-model")
main.add_command(models_cmd, "models")
main.add_command(stats_cmd, "stats")
main.add_command(train_cmd, "train")
