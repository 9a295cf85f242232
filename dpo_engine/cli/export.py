"""`dpo-engine export-model`: a trained model out as a transformers folder, a PEFT adapter, a GGUF
file or an Ollama folder (see dpo_engine.export)."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from dpo_engine.cli.base import friendly_errors, progress_printer
from dpo_engine.export.formats import FORMATS
from dpo_engine.export.gguf_file import QUANTS


@click.command("export-model")
@click.argument("model_ref", metavar="MODEL")
@click.option("--format", "fmt", required=True, type=click.Choice(list(FORMATS)),
              help="hf: transformers folder (LoRA merged); peft: the LoRA adapter; gguf: one .gguf file "
                   "(llama.cpp, LM Studio); gguf-lora: a LoRA run's adapter alone as GGUF (llama.cpp --lora); "
                   "ollama: Modelfile + .gguf (a LoRA run over an Ollama model: the adapter alone + FROM that model).")
@click.option("--output", required=True, type=click.Path(path_type=Path),
              help="The folder to write (hf, peft, ollama) or the .gguf file (gguf, gguf-lora).")
@click.option("--quant", default="f16", show_default=True, type=click.Choice(list(QUANTS)),
              help="GGUF weights: f16 (as trained, rounded to half precision), q8_0 (about half the size), q4_1 / "
                   "q4_0 (about a third; the embedding and output matrices stay q8_0). Measured mean change of log p "
                   "per token: 0.001, 0.03, 0.07, 0.49 (bench/README.md).")
@click.option("--overwrite", is_flag=True, help="Replace an existing export at --output.")
@click.option("--project", "project_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The project the model was trained in (read only): its data, the run's held-out results, "
                   "the Compare win rate and the loss/accuracy curves go into the model card (folder formats).")
@friendly_errors
def export_model_cmd(model_ref: str, fmt: str, output: Path, quant: str, overwrite: bool, project_path: Path | None):
    """Export MODEL (a run's checkpoint folder, a model folder, 'default', a .gguf) for other tools."""
    from dpo_engine.export import export_model

    if project_path is not None and not FORMATS[fmt].as_folder:
        click.echo("(--project is not used for --format gguf: a single .gguf file carries no model card.)", err=True)
    result = export_model(model_ref, fmt, output, quant=quant, overwrite=overwrite, on_event=progress_printer,
                          project=project_path)
    click.echo(f"Wrote {result.path} ({', '.join(result.files)}; {result.size_bytes / 1e6:.1f} MB) in "
               f"{result.seconds:.1f} s.")
    if result.note:
        click.echo(result.note)
    if result.command:
        click.echo("To add it to Ollama, run:")
        click.echo(f"  {result.command}")
        if shutil.which("ollama") is None:
            click.echo("(ollama is not on PATH here; install it from https://ollama.com first.)", err=True)
