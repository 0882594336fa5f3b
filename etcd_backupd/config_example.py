"""`config.example.toml`, written from the config models: their field descriptions,
defaults and examples, so the example cannot drift from what the daemon accepts.

    python -m etcd_backupd.config_example > config.example.toml
"""

from __future__ import annotations

import json
import re
import textwrap
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .config import Config, NotifyConfig, type_tag, union_members
from .config_destinations import DestinationConfig

WIDTH = 99
HEADER = """\
etcd-backupd configuration, generated from the daemon's own models by
`python -m etcd_backupd.config_example`. A commented-out key is optional: the line shows its
default, or an example when it has none. Unknown keys are errors. Check a file with:
  etcd-backupd check-config --config /etc/etcd-backupd/config.toml"""
# the tables of several entries, and the variants each may take
ARRAYS: dict[str, Any] = {"destination": DestinationConfig, "notify": NotifyConfig}


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def toml_value(value: Any) -> str:
    """A TOML literal for a default or an example."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        pairs = ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + pairs + " }" if pairs else "{}"
    raise TypeError(f"no TOML literal for {value!r}")


def _comment(text: str) -> list[str]:
    lines: list[str] = []
    for paragraph in text.split("\n"):
        lines += textwrap.wrap(paragraph, WIDTH - 2, break_on_hyphens=False) or [""]
    return [f"# {line}".rstrip() for line in lines]


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return None if field.default is PydanticUndefined else field.default


def _is_table(annotation: Any) -> bool:
    """Whether a field is a table of its own rather than a key."""
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_is_table(arg) for arg in get_args(annotation) if arg is not type(None))
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _keys(
    model: type[BaseModel],
    active: bool,
    skip: tuple[str, ...] = (),
    given: dict[str, str] | None = None,
) -> list[str]:
    """Each key of a model with its description, the required ones first: set when required
    and the block is active, commented out otherwise. `given` holds the values of keys that
    name the entry (its type tag)."""
    lines: list[str] = []
    fields = sorted(
        model.model_fields.items(),
        key=lambda item: (item[0] not in (given or {}), not item[1].is_required()),
    )
    for name, field in fields:
        if name in skip:
            continue
        if given and name in given:
            lines.append(f"{'' if active else '# '}{name} = {toml_value(given[name])}")
            continue
        if _is_table(field.annotation) and not field.examples:
            # a sub-table of an entry (a destination's own retention) is described, not shown;
            # one with an example is shown as an inline table
            lines += ["", *_comment(field.description or "")]
            continue
        description = field.description or ""
        default = _default(field)
        example = field.examples[0] if field.examples else None
        if field.is_required():
            if example is None:
                raise ValueError(f"{model.__name__}.{name} is required but has no example")
            lines += ["", *_comment(description)]
            lines.append(f"{'' if active else '# '}{name} = {toml_value(example)}")
            continue
        shown = default if default not in (None, [], {}) else example
        if shown is None:
            raise ValueError(f"{model.__name__}.{name} has neither a default nor an example")
        if example is not None and shown is default and example != default:
            description += f"\nDefault: {toml_value(default)}."
            shown = example
        lines += ["", *_comment(description)]
        lines.append(f"# {name} = {toml_value(shown)}")
    return lines


def _intro(model: type[BaseModel]) -> list[str]:
    doc = " ".join((model.__doc__ or "").split())
    return _comment(doc) if doc else []


def _array(name: str, field: FieldInfo) -> list[str]:
    """A `[[name]]` block per variant of the union; only the first is active, and only when
    at least one entry is required."""
    lines = _comment(field.description or "")
    required = bool(field.is_required())
    for index, model in enumerate(union_members(ARRAYS[name])):
        active = required and index == 0
        tag = type_tag(model)
        # an entry's name is required where it has one; its type is a fine name for an example
        given = {"type": tag, "name": tag} if "name" in model.model_fields else {"type": tag}
        block = [f"[[{name}]]", *_keys(model, active, given=given)]
        lines += ["", *_intro(model)]
        lines += (
            block
            if active
            else [f"# {line}" if line and not line.startswith("#") else line for line in block]
        )
    return lines


def render() -> str:
    """The whole example file: the top-level keys, then a table per section in model order."""
    tables = [
        name
        for name, field in Config.model_fields.items()
        if name in ARRAYS or _is_table(field.annotation)
    ]
    lines = [*_comment(HEADER), *_keys(Config, active=False, skip=tuple(tables))]
    for name in tables:
        field = Config.model_fields[name]
        lines.append("")
        if name in ARRAYS:
            lines += _array(name, field)
            continue
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        lines += [f"[{name}]", *_intro(model), *_keys(model, active=False)]
    return "\n".join(lines) + "\n"


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
