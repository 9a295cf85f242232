"""An Ollama Modelfile for an exported GGUF: FROM, TEMPLATE (the chat template in Go template
syntax), SYSTEM (the template's default system prompt) and the stop tokens.

The chat template is not parsed: it is rendered on probe conversations and the output compared
with ChatML (`<|im_start|>role\\ncontent<|im_end|>\\n`, as SmolLM2 and Qwen write it). Only a
template that renders exactly so is translated; any other is refused, so the Modelfile never
formats prompts differently from how the model was trained.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from dpo_engine.errors import ModelError

START, END = "<|im_start|>", "<|im_end|>"

# Ollama puts the system messages into .System and the rest into .Messages; the last turn is open.
CHATML_TEMPLATE = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}<|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
"""


def _chatml(messages: list[dict]) -> str:
    return "".join(f"{START}{m['role']}\n{m['content']}{END}\n" for m in messages) + f"{START}assistant\n"


def _render(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def chatml_default_system(tokenizer) -> str | None:
    """The system prompt the template adds when none is given (None: it adds none).

    Raises ModelError when the template is not ChatML.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("The model has no chat template, so there is nothing to translate into an Ollama "
                         "TEMPLATE. Export with --format gguf and write the Modelfile by hand.")
    turns = [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
             {"role": "user", "content": "U2"}]
    with_system = [{"role": "system", "content": "S"}] + turns
    try:
        rendered_system = _render(tokenizer, with_system)
        rendered = _render(tokenizer, turns)
    except Exception as exc:  # a template that cannot render these is not one we can translate
        raise ModelError(f"The model's chat template could not be rendered for translation: {exc}") from exc
    if rendered_system != _chatml(with_system):
        raise ModelError("Ollama export translates ChatML-style chat templates (<|im_start|>role ... <|im_end|>, "
                         "as SmolLM2 and Qwen use); this model's template is different. Export with --format "
                         "gguf: Ollama and LM Studio can read the template stored in the GGUF.")
    tail = _chatml(turns)
    prefix = rendered[: -len(tail)] if rendered.endswith(tail) else None
    match = re.fullmatch(re.escape(START) + r"system\n(.*)" + re.escape(END) + r"\n", prefix or "", flags=re.S)
    if prefix == "":
        return None
    if match is None:
        raise ModelError("The model's ChatML template adds something other than a system prompt when none is "
                         "given; it cannot be translated into an Ollama TEMPLATE.")
    return match.group(1)


def stop_tokens(tokenizer) -> list[str]:
    """Where generation must stop: the turn markers and the tokenizer's end of sequence."""
    stops = [END, START]
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    return stops


def _unwritable(text: str, what: str, one_line: bool) -> str | None:
    """Why `text` cannot be a Modelfile value, or None. Ollama's parser drops every rune Go's
    strconv.IsPrint rejects, except a space, tab or line break inside a value: such a value would
    arrive changed; and a line break ends a value that is not quoted across lines."""
    for ch in text:
        if ch in "\r\n" and one_line:
            return f"the {what} {text!r} holds a line break, which would start a new Modelfile line"
        if not ch.isprintable() and ch not in " \t\r\n":
            return f"the {what} {text!r} holds the unprintable character {ch!r}, which Ollama's Modelfile drops"
    return None


def _unquote(value: str) -> str | None:
    """As Ollama's parser unquotes a value: three quotes, one quote, or none; None: not closed yet."""
    if value.startswith('"""'):
        return value[3:-3] if len(value) >= 6 and value.endswith('"""') else None
    if value.startswith('"'):
        return value[1:-1] if len(value) >= 2 and value.endswith('"') else None
    return value


def _read_back(written: str) -> str | None:
    """The value Ollama's parser (parser/parser.go, ParseFile, stateValue) reads from `CMD <written>` and a
    line break, or None when the value ends before the end of `written` (the rest would be lines of
    their own) or never ends. At each line break the text so far, trimmed, is the value if it unquotes."""
    text = ""
    for i, ch in enumerate(written + "\n"):
        if ch in "\r\n":
            value = _unquote(text.strip())
            if value is not None:
                return value if i == len(written) else None
        if ch in " \t\r\n" or ch.isprintable():
            text += ch
    return None


def quote_value(text: str, what: str, style: str = "bare") -> str:
    """`text` written so that Ollama's parser reads back exactly `text` as one command's value.

    `style`: "bare" (a name or path, as Ollama's own writer puts FROM: as it is where that reads back so),
    "quoted" (one line in double quotes, as PARAMETER values), "prose" (a template, a system prompt:
    triple quotes, and more than one line allowed). Nothing is escaped in a Modelfile, so a value is
    written only in a form the parser reads back unchanged (checked), else falling back to the other
    quotes; ModelError says why where no form does (a line break in a name or path, an unprintable
    character, a line of prose that ends with three double quotes)."""
    why = _unwritable(text, what, one_line=style != "prose")
    if why is None:
        first = {"bare": text, "quoted": '"' + text + '"', "prose": '"""' + text + '"""'}[style]
        for written in (first, '"' + text + '"', '"""' + text + '"""'):
            if _read_back(written) == text:
                return written
        why = f"a line of the {what} ends with three double quotes, which end a Modelfile value"
    raise ModelError(f"Cannot write the Ollama Modelfile: {why}. Choose another name, or export with --format "
                     "gguf (or gguf-lora) and write the Modelfile by hand.")


# the characters of a model name Ollama accepts (types/model/name.go: letters, digits, _ - . in each
# part, ':' before the tag and in the host, '/' between parts)
OLLAMA_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]*")


def check_model_name(name: str) -> str:
    """`name` if Ollama would accept it as a model name; else ModelError saying why."""
    if not OLLAMA_NAME.fullmatch(name):
        raise ModelError(f"Cannot write the Ollama Modelfile: {name!r} is not a model name Ollama accepts "
                         "(letters, digits, '_', '-', '.', ':' and '/' only). Rename the model in Ollama, or "
                         "export with --format gguf-lora and write the Modelfile by hand.")
    return name


def modelfile(gguf_name: str, tokenizer) -> str:
    """The Modelfile text for `gguf_name` (a file beside it)."""
    system = chatml_default_system(tokenizer)
    lines = [f"FROM {quote_value('./' + gguf_name, 'GGUF file name')}", "",
             f"TEMPLATE {quote_value(CHATML_TEMPLATE, 'chat template', 'prose')}", ""]
    if system:
        lines += [f"SYSTEM {quote_value(system, 'default system prompt', 'prose')}", ""]
    lines += [f"PARAMETER stop {quote_value(stop, 'stop token', 'quoted')}" for stop in stop_tokens(tokenizer)]
    return "\n".join(lines) + "\n"


def ollama_name(folder: Path) -> str:
    """A model name Ollama accepts, from the export folder's name."""
    name = re.sub(r"[^a-z0-9._-]+", "-", folder.name.lower()).strip("-._")
    return name or "dpo-studio-model"


def create_command(name: str, modelfile_path: Path) -> str:
    return f"ollama create {shlex.quote(name)} -f {shlex.quote(str(modelfile_path))}"


def ollama_model_of(path: str | Path | None) -> str | None:
    """The name Ollama knows a model by ("llama3.2:3b"), where `path` is a model blob in an Ollama store
    (models/blobs/sha256-...), as the model picker gives it; None for any other path."""
    from dpo_engine.catalog.sources import ollama_entries

    if not path:
        return None
    blob = Path(path).expanduser()
    if blob.parent.name != "blobs" or not blob.name.startswith("sha256-") or not blob.is_file():
        return None
    names = [e.name for e in ollama_entries(blob.parent.parent) if e.usable and Path(e.path) == blob]
    return names[0] if names else None


def adapter_modelfile(base_name: str, adapter_name: str) -> str:
    """A Modelfile that runs `adapter_name` (a GGUF LoRA beside it) over the Ollama model `base_name`:
    the base's template, system prompt and stop tokens are inherited, and nothing of it is copied."""
    return (f"FROM {quote_value(check_model_name(base_name), 'Ollama model name')}\n"
            f"ADAPTER {quote_value('./' + adapter_name, 'adapter file name')}\n")
