"""Turns known user-facing errors, wherever in the run they were raised, into one message."""

from __future__ import annotations

import sys

# (module, class) of every user-facing error. Looked up among the modules already
# imported: an error whose module was never loaded cannot have been raised, and a
# config error found before TensorFlow is imported is reported without importing it.
KNOWN_ERRORS = (
    ("trainer.typed_config", "ConfigError"),
    ("tfx_pipeline.data.spans", "SpanError"),
    ("tfx_pipeline.data.tables", "DataError"),
    ("tfx_pipeline.data.validation", "DataValidationError"),
    ("trainer.retrieval.index", "IndexRecallError"),
    ("trainer.skeleton", "TrainingDataError"),
    ("tfx_pipeline.rollback", "RollbackError"),
)


def _known_types() -> tuple[type, ...]:
    loaded = [getattr(sys.modules[m], name) for m, name in KNOWN_ERRORS if m in sys.modules]
    return (*loaded, FileNotFoundError)


def find_user_error(exc: BaseException) -> BaseException | None:
    """The first known error in the exception's cause/context chain (TFX wraps executor errors)."""
    known = _known_types()
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, known):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def user_error_message(exc: BaseException) -> str | None:
    found = find_user_error(exc)
    return None if found is None else f"{type(found).__name__}: {found}"
