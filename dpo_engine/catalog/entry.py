"""One row of the catalog: what a model is, read from its files' headers, and whether it fits."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from dpo_engine.catalog.fit import FitVerdict, ModelShape

CATALOG_SOURCES = ("default", "checkpoint", "hf-cache", "ollama", "lm-studio", "folder", "path")


@dataclass(frozen=True)
class CatalogEntry:
    name: str  # what a person calls it: "Qwen/Qwen2.5-0.5B-Instruct", "llama3.2:1b", a file name
    source: str  # one of CATALOG_SOURCES
    path: str  # what to give load_model / --model: "default", a folder or a GGUF file
    format: str = ""  # "safetensors" | "gguf" | "adapter" | "" (unreadable)
    family: str | None = None  # model_type (config.json) or general.architecture (GGUF)
    parameters: int | None = None  # from safetensors shapes or GGUF tensor infos, or estimated from config
    parameters_estimated: bool = False  # True when only config.json gave the count
    precision: str | None = None  # "bfloat16", "float32", "Q4_K_M", ...
    size_bytes: int = 0  # on disk (the blob/snapshot the path names)
    chat_template: bool | None = None  # None: unknown; False: a base model, used in plain-text mode
    license: str | None = None
    gated: str | None = None  # the model's terms ask for acceptance: what they say
    notes: tuple[str, ...] = ()  # things a person should know before picking it
    error: str | None = None  # why this entry cannot be used (shown greyed); None: usable
    shape: ModelShape | None = field(default=None, repr=False)  # for the fit estimate
    fit: FitVerdict | None = None

    @property
    def usable(self) -> bool:
        return self.error is None

    def with_fit(self, fit: FitVerdict | None) -> "CatalogEntry":
        return replace(self, fit=fit)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (`dpo-engine models --json`)."""
        out = asdict(self)
        out.pop("shape")
        out["notes"] = list(self.notes)
        out["fit"] = self.fit.to_dict() if self.fit else None
        out["verdict"] = self.fit.verdict if self.fit else None
        return out


def broken(name: str, source: str, path: str, reason: str, size: int = 0, fmt: str = "") -> CatalogEntry:
    """An entry that cannot be used, carrying the reason instead of raising."""
    return CatalogEntry(name=name, source=source, path=path, format=fmt, size_bytes=size, error=reason)


def format_parameters(n: int | None, estimated: bool = False) -> str:
    """135M, 1.2B, ~7.2B (estimated from the config), or ? when unknown: the picker's and the CLI's column."""
    if not n:
        return "?"
    text = f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"
    return ("~" if estimated else "") + text


def format_size(n: int) -> str:
    """Bytes on disk in decimal units (as file managers show them)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
