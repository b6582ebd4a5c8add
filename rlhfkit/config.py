"""Typed, nested configs loaded from YAML with ``key=value`` overrides.

Every stage's config is a tree of dataclasses. A recipe is a YAML file whose keys mirror the tree; the
command line only overrides (``optim.lr=3e-4 lora.enabled=true``). Every key is checked against the
dataclass fields and every value against the field's type, so a typo or a wrong type is one sentence
naming the key (and the file) before any work starts — never a silently ignored setting.

Cross-field rules live in a ``validate(self)`` method on the dataclass that needs them; it is called after
loading and raises :class:`ConfigError` naming the keys involved.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rlhfkit.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A bad config key or value; the message names the key and, when known, the file."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is typing.Literal:
        if isinstance(value, bool):
            # YAML 1.1 reads the bare words no/off/yes/on as booleans: `mixed_precision: no` means "no".
            words = ("yes", "on", "true") if value else ("no", "off", "false")
            value = next((w for w in words if w in args), value)
        if value in args:
            return value
        raise ConfigError(f"{key}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        return origin(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _build(cls: type[T], data: dict, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]!s}; valid keys here: {', '.join(sorted(names))}"
        )
    factories = {f.name: f.default_factory for f in dataclasses.fields(cls)
                 if f.default_factory is not dataclasses.MISSING}
    kwargs = {}
    for name, value in data.items():
        if isinstance(value, dict) and name in factories:
            # a section given in part keeps the parent's defaults for the rest (DPOConfig's train section
            # defaults to output_dir runs/dpo, not TrainConfig's own runs/train)
            default = factories[name]()
            if dataclasses.is_dataclass(default):
                value = _merge(_init_fields(default), value)
        kwargs[name] = _coerce(value, hints[name], prefix + name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # a missing required field, or a __post_init__ check
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from None


def _init_fields(instance: Any) -> dict:
    """The ``__init__`` arguments that rebuild ``instance`` (nested dataclasses stay instances)."""
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance) if f.init}


def _parse_override_value(text: str) -> Any:
    """``key=value`` values are YAML scalars/lists: ``true``, ``3``, ``3e-4``, ``[1,2]``, ``null``."""
    if text == "":
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def to_dict(config: Any) -> dict:
    """The config as plain data (for saving beside a checkpoint and comparing on resume)."""
    return dataclasses.asdict(config)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: str | Path) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return loaded


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> T:
    """Build ``cls`` from defaults, then the YAML file at ``path``, then ``key=value`` overrides.

    Raises :class:`ConfigError` with one sentence naming the file and key on any unknown key, wrong type,
    malformed override or failed cross-field rule.
    """
    data: dict = {}
    source = "config"
    if path is not None:
        source = str(path)
        data = _read_yaml(path)
    try:
        override_tree: dict = {}
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"override {item!r}: expected key=value")
            _set_dotted(override_tree, key.strip(), _parse_override_value(raw))
        config = _build(cls, _merge(data, override_tree))
        validate_tree(config)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return config


def _as_tree(value: Any) -> Any:
    """Plain nested dicts: dataclass instances become dicts, ``"a.b": v`` keys become ``{"a": {"b": v}}``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = to_dict(value)
    if not isinstance(value, dict):
        return value
    tree: dict = {}
    for key, item in value.items():
        item = _as_tree(item)
        if isinstance(key, str) and "." in key:
            holder: dict = {}
            _set_dotted(holder, key, item)
            tree = _merge(tree, holder)
        elif isinstance(item, dict) and isinstance(tree.get(key), dict):
            tree[key] = _merge(tree[key], item)
        else:
            tree[key] = item
    return tree


def build_config(cls: type[T], config: Any = None, /, **settings: Any) -> T:
    """``cls`` from ``config`` — None (the defaults), an instance, a dict, or a YAML path — with keyword
    ``settings`` on top, validated like :func:`load_config`.

    Sections are dicts (``train={"lr": 1e-4}`` changes one key of ``train``) and dotted keys work in any dict
    (``**{"train.lr": 1e-4}``), so a notebook writes the same keys as a recipe or the command line::

        build_config(SFTConfig, "configs/sft.yaml", model={"path": "runs/base"}, **{"train.max_steps": 20})
    """
    source = "config"
    if config is None:
        data: dict = {}
    elif isinstance(config, str | Path):
        source, data = str(config), _read_yaml(config)
    elif isinstance(config, cls | dict):
        data = _as_tree(config)
    else:
        raise TypeError(f"{cls.__name__}: expected None, a {cls.__name__}, a dict or a YAML path, "
                        f"got {type(config).__name__}")
    try:
        built = _build(cls, _merge(_as_tree(data), _as_tree(settings)))
        validate_tree(built)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return built


class Recipe:
    """Constructors every stage config has beside its dataclass ``__init__`` (which does not validate)."""

    @classmethod
    def from_yaml(cls: type[T], path: str | Path, *overrides: str, **settings: Any) -> T:
        """A recipe file with ``key=value`` strings and keyword settings on top (see :func:`build_config`)."""
        built = load_config(cls, path, overrides)
        return build_config(cls, built, **settings) if settings else built

    @classmethod
    def from_dict(cls: type[T], data: dict, **settings: Any) -> T:
        """Nested dicts (or dotted keys), as a recipe file would hold them."""
        return build_config(cls, data, **settings)

    @classmethod
    def build(cls: type[T], **settings: Any) -> T:
        """The defaults with keyword settings: ``SFTConfig.build(model={"path": p}, train={"lr": 1e-4})``."""
        return build_config(cls, None, **settings)


def validate_tree(config: Any) -> None:
    """Call ``validate()`` on every nested dataclass that defines one, children first."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate_tree(value)
    check = getattr(config, "validate", None)
    if callable(check):
        check()


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")
