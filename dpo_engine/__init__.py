"""DPO Studio's engine: store, formats, models, encoding, log-probs, losses, trainer,
generation and CLI. Usable without a screen; never imports Qt."""

__version__ = "0.1.0"
