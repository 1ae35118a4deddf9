"""Turns known user-facing errors, wherever in the run they were raised, into one message."""

from __future__ import annotations


def _known_types() -> tuple[type, ...]:
    from tfx_pipeline.config import ConfigError
    from tfx_pipeline.data.spans import SpanError
    from tfx_pipeline.data.tables import DataError
    from tfx_pipeline.data.validation import DataValidationError
    from trainer.retrieval.index import IndexRecallError

    return (ConfigError, SpanError, DataError, DataValidationError, IndexRecallError, FileNotFoundError)


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
