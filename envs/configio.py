"""YAML and JSON in and out for configs: scenarios, suites, resolved configs.

The pure simulator (:mod:`ptreclaim.envs.sim`) never parses YAML; it builds
frozen dataclasses from plain data (:func:`ptreclaim.envs.sim.config.build`).
This module is the one place that reads config-like files: every problem (a
missing or unreadable file, a YAML syntax error, an unknown key, a value out of
range) raises :class:`~ptreclaim.envs.sim.config.ConfigError` with one line
that names the file and says what to fix.  Writes are atomic (a temporary file
in the same folder, then ``os.replace``), so a crash never leaves half a file.

Every YAML and JSON text the tools read -- config files, thresholds files,
``--set`` values -- passes the same limits (:data:`LIMITS`): file size,
nesting depth, YAML aliases and the number of values they expand to, and the
digits of an integer.  A file past one is refused in one line before anything
is built from it, so a "billion laughs" alias bomb, a 5,000-digit integer or a
10,000-deep nesting costs milliseconds instead of memory, time or a
traceback; error messages quote at most ~80 characters of a value
(:func:`~ptreclaim.envs.sim.config.quote`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..configs import CONFIG_DIR
from .sim.config import ConfigError, build, check_keys, did_you_mean, quote
from .sim.fileio import write_text_atomic
from .sim.scenariogen import scenario_data, spec_from_data
from .sim.simulator import ScenarioConfig
from .sim.workloads import WORKLOADS

__all__ = [
    "LIMITS",
    "ConfigError",
    "InputLimits",
    "dump_yaml",
    "load_json",
    "load_scenario",
    "load_suite",
    "load_yaml",
    "parse_json",
    "parse_yaml",
    "read_config_text",
    "resolve_suite",
    "write_text_atomic",
    "write_yaml_atomic",
]

#: Keys of a suite file.
SUITE_KEYS = ("name", "description", "scenarios", "generate")


@dataclass(frozen=True)
class InputLimits:
    """Caps on every YAML and JSON input.  The largest config shipped or
    written (a run's resolved ``config.yaml``: every scenario in full) is
    ~30 KB, ~2,400 values and 8 levels deep, so each cap is far above real
    use and far below harm."""

    #: Bytes of one file.
    file_bytes: int = 4 * 1024 * 1024
    #: Nesting depth of mappings and lists.
    depth: int = 64
    #: YAML aliases (``*name``) in one document; the shipped configs use four.
    aliases: int = 1000
    #: Values (scalars, mappings, lists) once every alias is expanded.
    values: int = 200_000
    #: Digits of one integer (Python itself refuses to parse more than 4300).
    int_digits: int = 40


#: The limits every reader applies.
LIMITS = InputLimits()

_INT = re.compile(r"[-+]?(0[xob])?[0-9a-fA-F_:]+")


def _int_digits(text: str) -> int:
    return sum(c.isalnum() for c in text)


def read_config_text(path: str | os.PathLike[str], expected: str) -> str:
    """The UTF-8 text of a config-like file; :class:`ConfigError` (one line,
    naming the file and the fix) when it is missing, a folder, unreadable,
    larger than :attr:`InputLimits.file_bytes` or not UTF-8.  ``expected``
    names what the file should be (``a YAML file``)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(LIMITS.file_bytes + 1)
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file; check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, expected {expected}") from None
    except PermissionError:
        raise ConfigError(f"{p}: permission denied; make the file readable") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    if len(data) > LIMITS.file_bytes:
        raise ConfigError(f"{p}: larger than {LIMITS.file_bytes // (1024 * 1024)} MiB, the limit "
                          f"for {expected}; is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


class _LimitError(Exception):
    """A YAML document past one of :data:`LIMITS` (message, node mark)."""

    def __init__(self, message: str, mark: Any) -> None:
        super().__init__(message)
        self.mark = mark


class _LimitedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no Python objects, no eval) that counts while it
    composes: nesting depth (checked before recursing, so deep input cannot
    exhaust the stack), aliases, the values the document expands to (each
    node's expanded size, so an alias bomb is caught from its first levels
    without expanding anything) and integer digits."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        # Expanded size of each composed node; nodes stay alive in the tree, so ids are stable.
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            self._aliases += 1
            if self._aliases > LIMITS.aliases:
                raise _LimitError(f"more than {LIMITS.aliases} aliases", mark)
            node = super().compose_node(parent, index)
            if id(node) not in self._sizes:
                raise _LimitError("an alias refers to a node that contains it", mark)
            return node
        mark = self.peek_event().start_mark
        self._depth += 1
        if self._depth > LIMITS.depth:
            raise _LimitError(f"nested deeper than {LIMITS.depth} levels", mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.ScalarNode):
            size = 1
            if node.tag == "tag:yaml.org,2002:int" and _int_digits(node.value) > LIMITS.int_digits:
                raise _LimitError(f"an integer of {_int_digits(node.value)} digits (at most "
                                  f"{LIMITS.int_digits})", mark)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._sizes[id(c)] for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            pairs: list[tuple[Any, Any]] = node.value
            size = 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in pairs)
        else:  # the composer makes no other node
            raise _LimitError("not a YAML node", mark)
        if size > LIMITS.values:
            raise _LimitError(f"expands to more than {LIMITS.values} values (through aliases?)",
                              mark)
        self._sizes[id(node)] = size
        return node


def parse_yaml(text: str, where: str) -> Any:
    """Parse YAML text within :data:`LIMITS` (``where`` names it in errors:
    a file, a flag); :class:`ConfigError` with the line and column of a
    syntax error or of the value past a limit."""
    loader = _LimitedLoader(text)
    try:
        return loader.get_single_data()
    except _LimitError as exc:
        at = f" at line {exc.mark.line + 1}, column {exc.mark.column + 1}" if exc.mark else ""
        raise ConfigError(f"{where}: refused{at}: {exc}; simplify the YAML") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(f"{where}: YAML syntax error at {at}{problem}; "
                          "fix the YAML (indentation, colons, quotes)") from None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "syntax error"
        raise ConfigError(f"{where}: not valid YAML: {quote(first)}; fix the YAML") from None
    except RecursionError:  # below the depth limit this cannot happen; never a traceback
        raise ConfigError(f"{where}: refused: nested too deeply; simplify the YAML") from None
    finally:
        loader.dispose()


def load_yaml(path: str | os.PathLike[str]) -> Any:
    """Parse one YAML file with a safe loader (no Python objects, no eval)
    within :data:`LIMITS`.

    Raises :class:`ConfigError` (one line, naming the file and the fix) when the
    file is missing, unreadable, too large, not UTF-8, not valid YAML (with the
    line and column of the syntax error) or past a limit.
    """
    p = Path(path)
    return parse_yaml(read_config_text(p, "a YAML file"), str(p))


#: JSON tokens that change the nesting depth, with strings skipped whole.
_JSON_NESTING = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def parse_json(text: str, where: str) -> Any:
    """Parse JSON text within :data:`LIMITS` (depth, integer digits; no
    ``NaN``/``Infinity``); :class:`ConfigError` naming ``where``."""
    depth = 0
    for m in _JSON_NESTING.finditer(text):
        tok = m.group()
        if tok in "[{":
            depth += 1
            if depth > LIMITS.depth:
                line = text.count("\n", 0, m.start()) + 1
                raise ConfigError(f"{where}: refused at line {line}: nested deeper than "
                                  f"{LIMITS.depth} levels; simplify the JSON")
        elif tok in "]}":
            depth -= 1

    def parse_int(digits: str) -> int:
        if _int_digits(digits) > LIMITS.int_digits:
            raise ConfigError(f"{where}: refused: an integer of {_int_digits(digits)} digits "
                              f"(at most {LIMITS.int_digits}); simplify the JSON")
        return int(digits)

    def parse_constant(name: str) -> Any:
        raise ConfigError(f"{where}: {name} is not a JSON number; give a finite number")

    try:
        return json.loads(text, parse_int=parse_int, parse_constant=parse_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON at line {exc.lineno}, column {exc.colno}: "
                          f"{exc.msg}; fix the JSON") from None
    except RecursionError:  # below the depth limit this cannot happen; never a traceback
        raise ConfigError(f"{where}: refused: nested too deeply; simplify the JSON") from None


def load_json(path: str | os.PathLike[str], expected: str = "a JSON file") -> Any:
    """Parse one JSON file within :data:`LIMITS` (see :func:`parse_json`)."""
    p = Path(path)
    return parse_json(read_config_text(p, expected), str(p))


def scenario_from_data(data: Any, where: str, default_name: str = "scenario") -> ScenarioConfig:
    """Build a :class:`ScenarioConfig` from parsed YAML; ``name`` defaults to
    ``default_name`` (the file's stem) when the data has none.

    Workload parameters are validated here too (unknown keys, ranges), and so
    is the jitter: every jittered parameter must stay in range at both ends of
    its ``U(1 - jitter, 1 + jitter)`` factor, so that no seed can fail later.
    """
    if isinstance(data, Mapping) and "name" not in data:
        data = {"name": default_name, **data}
    scenario = build(ScenarioConfig, data, where)
    for i, spec in enumerate(scenario.workloads):
        cls = WORKLOADS[spec.family]
        at = f"{where}.workloads[{i}].params"
        config = build(cls.Config, spec.params, at)
        jitter = scenario.jitter if spec.jitter < 0 else spec.jitter
        _check_jitter(config, cls.jitter_fields, jitter, at)
    return scenario


def _check_jitter(config: Any, names: tuple[str, ...], jitter: float, where: str) -> None:
    """Raise :class:`ConfigError` when scaling one jittered field by ``1 - jitter``
    or ``1 + jitter`` (as :meth:`Workload.make_config` does) leaves its range."""
    if jitter <= 0:
        return
    for name in names:
        value = getattr(config, name)
        for factor in (1.0 - jitter, 1.0 + jitter):
            scaled = value * factor
            new = max(1, round(scaled)) if isinstance(value, int) else scaled
            try:
                dataclasses.replace(config, **{name: new})
            except (ConfigError, ValueError) as exc:
                raise ConfigError(f"{where}.{name}: jitter {jitter:g} can scale {value!r} to "
                                  f"{new!r} ({exc}); lower the jitter or move the value away "
                                  "from its limit") from None


def load_scenario(path: str | os.PathLike[str]) -> ScenarioConfig:
    """Load a scenario YAML file into a frozen, validated :class:`ScenarioConfig`.

    Error messages start with the file name, then the dotted key
    (``scenario.yaml.machine.ram_mib: ...``).
    """
    p = Path(path)
    data = load_yaml(p)
    if data is None:
        raise ConfigError(f"{p}: the file is empty; a scenario needs at least 'workloads'")
    try:
        return scenario_from_data(data, p.name, default_name=p.stem)
    except ConfigError as exc:
        # Range checks in __post_init__ name the key but not the file.
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(p.name) else f"{p.name}: {msg}") from None


def suite_paths(path: str | os.PathLike[str]) -> list[Path]:
    """The scenario files a suite lists, resolved relative to the suite file."""
    p = Path(path)
    data = load_yaml(p)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{p}: expected a mapping with a 'scenarios' list, "
                          f"got {type(data).__name__}")
    check_keys(data, SUITE_KEYS, p.name)
    entries = data.get("scenarios")
    if entries is None and "generate" in data:
        return []  # only generated scenarios (load_suite)
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{p.name}.scenarios: expected a non-empty list of scenario files")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, str):
            raise ConfigError(f"{p.name}.scenarios[{i}]: expected a file path, got {entry!r}")
        out.append((p.parent / entry).resolve())
    if len(set(out)) != len(out):
        raise ConfigError(f"{p.name}.scenarios: a scenario file is listed twice")
    return out


def load_suite(path: str | os.PathLike[str]) -> list[ScenarioConfig]:
    """Load a suite into its scenarios, in order: the files of ``scenarios:``
    (relative paths), then those a ``generate:`` mapping names
    (:class:`~ptreclaim.envs.sim.scenariogen.GeneratorSpec`: ``seed``, ``count``,
    ``families``, ``exclude``, ``require``), validated like scenario files."""
    scenarios = [load_scenario(s) for s in suite_paths(path)]
    name = Path(path).name
    generate = load_yaml(path).get("generate")
    if generate is not None:
        spec = spec_from_data(generate, f"{name}.generate")
        scenarios += [scenario_from_data(scenario_data(spec, i), f"{name}.generate[{i}]")
                      for i in range(spec.count)]
    names = [s.name for s in scenarios]
    if len(set(names)) != len(names):
        raise ConfigError(f"{name}: two scenarios share a name; change generate.prefix "
                          "or a scenario's name")
    return scenarios


def shipped_names(kind: str) -> list[str]:
    """Stems of the shipped ``configs/<kind>/*.yaml`` (``suites``, ``scenarios``)."""
    return sorted(p.stem for p in (CONFIG_DIR / kind).glob("*.yaml"))


def resolve_suite(spec: str, label: str = "--suite") -> tuple[list[ScenarioConfig], list[Path]]:
    """The scenarios ``spec`` names, and their files: a shipped suite or
    scenario (``configs/suites/NAME.yaml``, ``configs/scenarios/NAME.yaml``),
    or a path to a suite YAML (``scenarios: [...]``) or to one scenario YAML.
    A bare name (no ``/``, no ``.yaml``) means the shipped file even when the
    working folder holds something of that name.  Errors name ``label``."""
    p = Path(spec)
    bare = p.suffix == "" and len(p.parts) == 1
    shipped = [CONFIG_DIR / kind / f"{spec}.yaml" for kind in ("suites", "scenarios")] \
        if bare and spec else []
    found = next((c for c in shipped if c.is_file()), None)
    if found is not None:
        p = found
    elif bare and not p.exists():
        known = shipped_names("suites")
        raise ConfigError(f"{label} {spec!r}: no such file, nor a shipped suite or "
                          f"scenario{did_you_mean(spec, known + shipped_names('scenarios'))}"
                          f"; shipped suites: {', '.join(known)}")
    data = load_yaml(p)
    if isinstance(data, Mapping) and "workloads" in data and "scenarios" not in data:
        return [load_scenario(p)], [p.resolve()]
    return load_suite(p), suite_paths(p)


def dump_yaml(data: Any) -> str:
    """YAML text for plain data (keys in insertion order, block style)."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def write_yaml_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write plain ``data`` as YAML to ``path`` atomically."""
    write_text_atomic(path, dump_yaml(data))
