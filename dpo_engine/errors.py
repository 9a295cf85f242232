"""The engine's exceptions. Expected failures carry a message a person can act on; the CLI
and the GUI show that message, never a traceback.

    DPOStudioError
     ├── ConfigError            a setting or flag is invalid (says which and how to fix it)
     ├── ModelError             a model reference cannot be resolved or loaded
     │    └── ModelNotFoundError    nothing at that path, or the hub is unreachable
     ├── DeviceError            the requested device is not available here
     ├── DataError              input data is malformed (line-numbered where it has lines)
     ├── StoreError             the project file cannot be opened or written
     │    ├── ProjectLockedError    another process holds the project
     │    └── NotAProjectError      the file is not a DPO Studio project (left untouched)
     ├── TrainingError          a run failed (non-finite loss, out of memory, ...)
     └── WriteError             an output (checkpoint, export) cannot be written (disk full, ...)
"""


class DPOStudioError(Exception):
    """Base of every expected failure in DPO Studio."""


class ConfigError(DPOStudioError):
    pass


class ModelError(DPOStudioError):
    pass


class ModelNotFoundError(ModelError):
    pass


class DeviceError(DPOStudioError):
    pass


class DataError(DPOStudioError):
    pass


class StoreError(DPOStudioError):
    pass


class ProjectLockedError(StoreError):
    pass


class NotAProjectError(StoreError):
    pass


class TrainingError(DPOStudioError):
    pass


class WriteError(DPOStudioError):
    pass


# The three storage failures a person can fix, recognised by errno or, for libraries that
# wrap the OS error in their own type (sqlite3, safetensors), by its text.
_STORAGE = (
    ("full", {28, 122}, ("no space left", "disk is full", "storagefull", "quota exceeded"),
     "the disk holding {path} is full. Free some space (or choose another disk), then try again"),
    ("read-only", {30}, ("read-only file system", "readonly database", "readonlyfilesystem"),
     "{path} is on a read-only location. Choose a folder you can write to (or copy the project there)"),
    ("denied", {1, 13}, ("permission denied",),
     "you may not write {path} (permission denied). Choose a folder you can write to, or fix its permissions"),
)


def storage_problem(exc: BaseException, path) -> str | None:
    """A sentence naming `path` and what to do when `exc` is a full disk, a read-only
    location or a permission refusal (whatever library raised it); None otherwise."""
    number = getattr(exc, "errno", None)
    text = str(exc).lower()
    for _kind, numbers, phrases, message in _STORAGE:
        if number in numbers or any(p in text for p in phrases):
            return message.format(path=path)
    return None
