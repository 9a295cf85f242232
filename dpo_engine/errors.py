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
     └── TrainingError          a run failed (non-finite loss, out of memory, ...)
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
