"""Line-aware YAML for config-like files: mappings and lists that remember the line of every value,
and a typed field reader whose errors name the line and the field (``file:12: steps[2].say: ...``).

Used by the scenario loader (`agent.scenario`); nothing in it knows about scenarios.
"""

from __future__ import annotations

import enum
import math
from typing import Any

import yaml


class YamlMap(dict[str, Any]):
    """A YAML mapping that remembers its own line and the line of each value."""

    line: int
    lines: dict[str, int]


class YamlSeq(list[Any]):
    line: int
    lines: list[int]


class LineLoader(yaml.SafeLoader):
    pass


def _construct_map(loader: yaml.SafeLoader, node: yaml.MappingNode) -> YamlMap:
    loader.flatten_mapping(node)
    data = YamlMap()
    data.line = node.start_mark.line + 1
    data.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise LocatedError(line, "", f"keys must be text, got {key!r}")
        if key in data:
            raise LocatedError(line, key, "duplicate key")
        data[key] = loader.construct_object(value_node, deep=True)
        data.lines[key] = value_node.start_mark.line + 1
    return data


def _construct_seq(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> YamlSeq:
    data = YamlSeq(loader.construct_object(item, deep=True) for item in node.value)
    data.line = node.start_mark.line + 1
    data.lines = [item.start_mark.line + 1 for item in node.value]
    return data


LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


class LocatedError(Exception):
    def __init__(self, line: int, field: str, message: str) -> None:
        super().__init__(message)
        self.line, self.field, self.message = line, field, message


def describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return repr(value)


class Fields:
    """Reads one mapping: typed getters that raise located errors; ``done()`` rejects unknown keys."""

    def __init__(self, data: Any, path: str, line: int) -> None:
        if not isinstance(data, YamlMap):
            raise LocatedError(line, path, f"expected a mapping, got {describe(data)}")
        self.data, self.path, self.used = data, path, set[str]()

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def line(self, key: str) -> int:
        return self.data.lines.get(key, self.data.line)

    def fail(self, key: str, message: str) -> LocatedError:
        return LocatedError(self.line(key), self.field(key), message)

    def raw(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.data.get(key, default)

    def text(self, key: str, default: str | None = None) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str):
            raise self.fail(key, f"expected text, got {describe(value)}")
        return value

    def number(self, key: str, default: float | None, lo: float | None = None, hi: float | None = None,
               integer: bool = False, optional: bool = False) -> float | None:
        value = self.raw(key, default)
        if value is None and optional:
            return None
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
            raise self.fail(key, f"expected {kind}, got {describe(value)}")
        if not math.isfinite(value):
            raise self.fail(key, f"expected a finite number, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.fail(key, f"expected {kind} in [{lo}, {hi}], got {value!r}")
        return value

    def required_number(self, key: str, lo: float | None = None, hi: float | None = None,
                        integer: bool = False) -> float:
        if key not in self.data:
            raise LocatedError(self.data.line, self.field(key), "missing")
        value = self.number(key, None, lo, hi, integer)
        assert value is not None
        return value

    def choice(self, key: str, enum_type: type[enum.Enum], default: enum.Enum) -> Any:
        value = self.raw(key, default.value)
        names = [str(m.value) for m in enum_type]
        if value not in names:
            raise self.fail(key, f"expected one of {', '.join(names)}, got {describe(value)}")
        return enum_type(value)

    def done(self) -> None:
        for key in self.data:
            if key not in self.used:
                raise self.fail(key, "unknown field")
