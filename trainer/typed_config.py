"""The one strict builder for every typed config section (pipeline, trainer, gate, ...).

``build(cls, mapping, where)`` turns a parsed YAML/JSON mapping into the frozen
dataclass ``cls``, recursively, by its type hints: unknown keys, missing required
keys and values of the wrong type are ``ConfigError``s that name the key's path
(``trainer.retrieval.epochs``). A dataclass may check its own allowed values in
``__post_init__`` (raising ``ConfigError``). Plain Python, no TensorFlow import, so
``recsys pipeline run`` checks the whole config before any library is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any


class ConfigError(ValueError):
    """A configuration is malformed; the message says where and how to fix it."""


def build(cls: type, raw: Any, where: str = "", skip: tuple[str, ...] = ()) -> Any:
    """Builds dataclass ``cls`` from a mapping; ``skip``: fields that are never read from it.

    ``where``: the key path of ``raw`` ("" for a whole file), the start of every message.
    """
    here = where or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{here}: expected a mapping, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in skip}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{here}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    kwargs = {}
    for name, field in fields.items():
        if name not in raw:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{here}: missing required key {name!r}")
            continue
        kwargs[name] = _coerce(hints[name], raw[name], f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{here}: {e}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _coerce([a for a in args if a is not type(None)][0], value, where)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(args[0], v, where) for v in value)
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if hint in (int, str) and type(value) is not hint:
        raise ConfigError(f"{where}: expected {'an integer' if hint is int else 'a string'}, got {value!r}")
    return value


def to_dict(cfg: Any) -> dict:
    """The mapping ``build`` reads back into an equal ``cfg``."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=list))


def one_of(where: str, value: Any, allowed) -> None:
    """``__post_init__`` helper: ``value`` must be one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"{where} must be one of {list(allowed)}, got {value!r}")
