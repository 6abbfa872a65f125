"""Frozen-dataclass configs built from plain mappings, with one-line errors.

YAML parsing lives outside the pure simulator (:mod:`ptreclaim.envs.configio`);
this module only turns already-parsed data into typed, validated, frozen
dataclasses.  Unknown keys are rejected with a did-you-mean hint, types are
checked, and range checks in ``__post_init__`` (:func:`check_ranges` for the
ranges declared beside the fields with :func:`ranged`) raise :class:`ConfigError`
naming the key and the allowed range.  Nothing is ever ``eval``'d and nothing
is merged silently.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import reprlib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, cast, get_args, get_origin

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming key and fix."""


#: At most this many characters of an offending value go into an error message.
QUOTE_CHARS = 80


class _ShortRepr(reprlib.Repr):
    """``reprlib`` bounded by :data:`QUOTE_CHARS`: its cost does not grow with
    the value (a YAML alias bomb, a megabyte string, a 5,000-digit integer)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxdict, self.maxlist, self.maxtuple = 3, 4, 6, 6
        self.maxstring = self.maxother = QUOTE_CHARS - 10
        self.maxlong = 40

    def repr_int(self, x: int, level: int) -> str:
        # repr() itself refuses integers of more than 4300 digits.
        if x.bit_length() > 128:
            return f"<an integer of about {int(x.bit_length() * math.log10(2)) + 1} digits>"
        return super().repr_int(x, level)


_SHORT = _ShortRepr()


def clip(text: str) -> str:
    """``text`` cut to about :data:`QUOTE_CHARS` characters (a command-line
    argument named in an error message)."""
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS - 3] + "..."


def quote(value: object) -> str:
    """``repr(value)``, cut to about :data:`QUOTE_CHARS` characters: what an
    error message shows of an offending value."""
    text = _SHORT.repr(value).replace("\n", " ")
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS - 3] + "..."


def check_range(where: str, value: float, lo: float | None = None, hi: float | None = None,
                *, lo_open: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``lo <= value <= hi`` (``lo < value``
    with ``lo_open``); ``None`` bounds are unbounded."""
    # No float() of the value: an integer of 400 digits does not convert.
    ok = isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        lo_s = "-inf" if lo is None else _num(lo)
        hi_s = "inf" if hi is None else _num(hi)
        bracket = "(" if lo_open else "["
        raise ConfigError(f"{where}: {quote(value)} is out of range; allowed "
                          f"{bracket}{lo_s}, {hi_s}]")


def ranged(default: T, lo: float | None = None, hi: float | None = None, *,
           lo_open: bool = False) -> T:
    """A dataclass field defaulting to ``default`` whose allowed range sits beside it;
    :func:`check_ranges` checks it (as :func:`check_range` would)."""
    return dataclasses.field(default=default, metadata={"range": (lo, hi, lo_open)})


def check_ranges(config: object, prefix: str) -> None:
    """:func:`check_range` on every :func:`ranged` field of the dataclass ``config``
    (inherited ones included), in field order, naming each ``prefix`` + field name
    (call it from ``__post_init__``)."""
    for name, (lo, hi, lo_open) in _ranges(cast(Any, type(config))):
        check_range(prefix + name, getattr(config, name), lo, hi, lo_open=lo_open)


@functools.cache
def _ranges(cls: type) -> tuple[tuple[str, tuple[float | None, float | None, bool]], ...]:
    """The :func:`ranged` fields of ``cls``, found once per class (configs are built
    at every env reset)."""
    return tuple((f.name, f.metadata["range"]) for f in dataclasses.fields(cls)
                 if "range" in f.metadata)


def _num(x: float) -> str:
    """An integer bound prints as an integer, others compactly."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(data: Mapping[Any, Any], allowed: typing.Collection[str], where: str) -> None:
    """Raise :class:`ConfigError` for the first key of ``data`` that is not one of
    ``allowed``: one line with ``where``, a did-you-mean hint and the allowed keys."""
    for key in data:
        if not isinstance(key, str) or key not in allowed:
            raise ConfigError(f"{where}: unknown key {quote(key)}"
                              f"{did_you_mean(str(key), allowed)}; "
                              f"allowed: {', '.join(allowed)}")


@functools.cache
def _type_hints(cls: Any) -> dict[str, Any]:
    """``typing.get_type_hints(cls)``, evaluated once per class: every env reset builds
    workload configs, and evaluating string annotations compiles them each time."""
    return typing.get_type_hints(cls)


def build(cls: type[T], data: Any, where: str = "config") -> T:
    """Build the frozen dataclass ``cls`` from a mapping, recursively.

    ``where`` names the place in error messages (a file, then dotted keys).
    Missing keys take the dataclass defaults.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys to values, "
                          f"got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = _type_hints(cast(Any, cls))
    check_keys(data, fields, where)
    kwargs = {key: _convert(hints[key], value, f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{where}: {quote(value)} fits none of {tp}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {quote(value)} is not one of "
                              f"{', '.join(map(repr, choices))}"
                              f"{did_you_mean(str(value), map(str, choices))}")
        return value
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        pairs = enumerate(zip(args, value, strict=True))
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in pairs)
    if origin in (dict, Mapping):
        kt, vt = get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {_convert(kt, k, where): _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {quote(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {quote(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {quote(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            # inf or nan pass some range checks and poison everything downstream.
            raise ConfigError(f"{where}: {quote(value)} is not a finite number; give a "
                              "finite value")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {quote(value)}")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{where}: unsupported config type {tp}")


def to_dict(obj: Any) -> Any:
    """The plain-data form of a config (for writing a resolved config back)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
