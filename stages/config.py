"""Recipes: YAML files mapped onto typed, frozen config dataclasses.

A recipe is plain YAML whose nested keys mirror a config dataclass. Values are checked against
the field types, unknown keys are errors that suggest the nearest known key, and command-line
overrides (``section.key=value``) are applied to the YAML data *before* the dataclass is built,
so a config object is never mutated once made.

Numbers are checked in one place, :func:`check_values`: every float must be finite (``x <= 0`` is
false for NaN, so range checks alone let it through), and a field declares its range once, in its
type: ``lr: PositiveFloat = 1e-6`` (``Annotated[float, Bounds(gt=0)]``). Recipe sections and the
stages' option dataclasses call it from ``__post_init__``, so a value is refused before anything
is written, with one line naming the recipe key (``optim.lr``) or the option (``--temperature``).
A plain ``float`` field added later is still held to being finite.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml

from stages.errors import MgpoError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Bounds:
    """Where a number may lie, declared once in a field's type (``Annotated[float, Bounds(gt=0)]``)."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def inside(self, value: float) -> bool:
        return not (
            (self.gt is not None and not value > self.gt)
            or (self.ge is not None and not value >= self.ge)
            or (self.lt is not None and not value < self.lt)
            or (self.le is not None and not value <= self.le)
        )

    def describe(self) -> str:
        """``must be positive``, ``must be >= 0``, ``must be in (0, 1]``..."""
        low = self.gt if self.gt is not None else self.ge
        high = self.lt if self.lt is not None else self.le
        if low is not None and high is not None:
            opening = "(" if self.gt is not None else "["
            closing = ")" if self.lt is not None else "]"
            return f"must be in {opening}{low:g}, {high:g}{closing}"
        if self.gt == 0:
            return "must be positive"
        if low is not None:
            return f"must be {'>' if self.gt is not None else '>='} {low:g}"
        return f"must be {'<' if self.lt is not None else '<='} {high:g}"


PositiveInt = Annotated[int, Bounds(gt=0)]
PositiveFloat = Annotated[float, Bounds(gt=0)]
NonNegativeInt = Annotated[int, Bounds(ge=0)]
NonNegativeFloat = Annotated[float, Bounds(ge=0)]
UnitFloat = Annotated[float, Bounds(ge=0, le=1)]  # a fraction or probability, [0, 1]
OpenUnitFloat = Annotated[float, Bounds(gt=0, le=1)]  # (0, 1], e.g. top_p


def check_values(obj: Any, prefix: str = "", flags: Mapping[str, str] | None = None) -> None:
    """Refuse a non-finite float or a number outside its field's ``Bounds``, anywhere in the
    dataclass ``obj`` (nested sections too), with one line naming the key.

    Keys are recipe keys (``prefix`` + ``optim.lr``), or with ``flags`` given, command-line
    options: ``--`` + the field name with dashes, unless ``flags`` names it (``{"n": "-n"}``).
    """
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if flags is None:
            key = f"{prefix}{field.name}"
        else:
            key = flags.get(field.name, "--" + field.name.replace("_", "-"))
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_values(value, f"{key}.")
        else:
            _check_number(hints.get(field.name, Any), value, key)


def _check_number(hint: Any, value: Any, key: str) -> None:
    if isinstance(value, list | tuple):
        for item in value:
            _check_number(Any, item, key)
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise MgpoError(f"{key} must be a finite number, got {value}")
    for bounds in _bounds(hint):
        if not bounds.inside(value):
            raise MgpoError(f"{key} {bounds.describe()}, got {value}")


def _bounds(hint: Any) -> list[Bounds]:
    """The ``Bounds`` in ``hint``'s annotations (through ``X | None`` too)."""
    if typing.get_origin(hint) is Annotated:
        return [m for m in hint.__metadata__ if isinstance(m, Bounds)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [b for option in typing.get_args(hint) for b in _bounds(option)]
    return []


def recipes_folder() -> Path:
    """Where the built-in recipes are: the ``recipes/`` folder of the source checkout this code
    runs from (a clone, an editable install, a worktree), else the installed ``mgpo_recipes``
    package (a wheel install)."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "recipes").is_dir():
        return checkout / "recipes"
    try:
        return Path(str(resources.files("mgpo_recipes")))
    except ModuleNotFoundError:
        raise MgpoError("this mgpo installation has no recipes (package mgpo_recipes)") from None


def builtin_recipes() -> dict[str, Path]:
    """Recipes shipped with mgpo, by name (file stem)."""
    folder = recipes_folder()
    return {f.stem: f for f in sorted(folder.glob("*.yaml"))}


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """Read a recipe by built-in name or by path; returns the raw nested dict."""
    path = Path(name_or_path)
    if not path.is_file():
        known = builtin_recipes()
        if name_or_path not in known:
            hint = _nearest(name_or_path, known)
            raise MgpoError(
                f"recipe '{name_or_path}' is neither a file nor a built-in recipe{hint}"
                f" (built-in: {', '.join(sorted(known))})"
            )
        path = known[name_or_path]
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise MgpoError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise MgpoError(f"{path}: a recipe must be a mapping of keys to values")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"rollout.n=8"`` -> (["rollout", "n"], 8); the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise MgpoError(f"override '{text}' must look like key=value (e.g. rollout.n=8)")
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[tuple[list[str], Any]]) -> dict[str, Any]:
    """A copy of ``data`` with each (key path, value) set; sections are created as needed."""
    out = _deep_copy(data)
    for keys, value in overrides:
        node = out
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[keys[-1]] = value
    return out


def build(cls: type[T], data: dict[str, Any], where: str = "recipe") -> T:
    """Build dataclass ``cls`` from nested ``data``, checking keys and value types."""
    if not isinstance(data, dict):
        raise MgpoError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise MgpoError(f"{where}: unknown key '{_join(where, key)}'{_nearest(key, fields)}")
        kwargs[key] = _coerce(hints[key], value, _join(where, key))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise MgpoError(f"{where}: {error}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """The resolved config as plain data (for run directories and manifests)."""
    return dataclasses.asdict(config)


def field_names(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key a recipe for ``cls`` may set (for help texts and suggestions)."""
    names: list[str] = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(hints[field.name]):
            names.extend(field_names(hints[field.name], key + "."))
        else:
            names.append(key)
    return names


# ----------------------------------------------------------------------------------- helpers


def _join(where: str, key: str) -> str:
    return key if where == "recipe" else f"{where.removeprefix('recipe.')}.{key}"


def _nearest(key: str, known: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Check (and gently convert) ``value`` against a type hint (ranges: ``check_values``)."""
    if typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    if dataclasses.is_dataclass(hint):
        return build(hint, value if value is not None else {}, f"recipe.{where}")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        # str accepts numbers too, so it is tried last: ``str | float`` keeps 0.5 a float.
        options = sorted(typing.get_args(hint), key=lambda option: option is str)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except MgpoError as error:
                errors.append(str(error))
        raise MgpoError(
            errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {hint}"
        )
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            allowed = ", ".join(repr(a) for a in typing.get_args(hint))
            raise MgpoError(f"{where}: {value!r} is not one of {allowed}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise MgpoError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        items = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise MgpoError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise MgpoError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "1e-6" as a string
            except ValueError:
                pass
        raise MgpoError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise MgpoError(f"{where}: expected a string, got {value!r}")
    return value
