"""Dataclass configs loadable from YAML and overridable from the command line.

Precedence: dataclass defaults < ``--config run.yaml`` < ``--set a.b=value`` overrides. Unknown keys
are errors that name the file and the dotted key, with suggestions. Values given with ``--set`` are
parsed as YAML scalars (``--set identify.params.tau_sas=2.5``, ``--set stats.sites=[mlp,q]``).
``__post_init__`` of each config only validates, so building a config has no side effects.

A method's settings are a typed config chosen by another key (:func:`variant_field`): ``identify.params`` is a
``SafeNeuronConfig`` when ``identify.method`` is ``safeneuron``. Its keys are checked against that type when
the config loads, like every other key; there are no free-form dicts of method parameters.

Keys taken out of a section are declared on its class (``KEY_CHANGES``, :class:`Removed` / :class:`Moved`) and
applied wherever a config is read, a run folder's stored config included (:func:`migrate_keys`): a removed key
fails naming the key, the record of its results and the last commit that had it; a moved key is read from its
old place with a warning."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar, get_type_hints

import yaml

from safeneurons.errors import ConfigError

C = TypeVar("C")
log = logging.getLogger("safeneurons.config")


VARIANT = "variant_of"


def variant_field(selector: str, lookup: Callable[[str], type], choices: Callable[[], list[str]], help: str) -> Any:
    """A field holding the typed settings of whatever the sibling field ``selector`` names (a registered
    method): ``lookup(name)`` gives that method's config dataclass (and raises ``ConfigError`` with suggestions
    for an unknown name), ``choices()`` every name (for the config reference). Declared ``Any``; after loading
    it always holds an instance of the looked-up class. The owning dataclass calls :func:`resolve_variant` in
    ``__post_init__`` for configs built in Python."""
    return field(default=None, metadata={"help": help, VARIANT: (selector, lookup), "variant_choices": choices})


def variant_choices(f: dataclasses.Field) -> dict[str, type]:
    """``{name: settings class}`` for every choice of a :func:`variant_field` (empty for other fields)."""
    if variant_of(f) is None:
        return {}
    _, lookup = variant_of(f)  # type: ignore[misc]
    return {name: lookup(name) for name in f.metadata["variant_choices"]()}


def variant_of(f: dataclasses.Field) -> tuple[str, Callable[[str], type]] | None:
    """``(selector, lookup)`` of a field made by :func:`variant_field`, else None."""
    return f.metadata.get(VARIANT)


def resolve_variant(owner: Any, name: str, where: str) -> None:
    """Make ``owner.<name>`` an instance of the class its selector names (:func:`settings_as`)."""
    f = next(f for f in dataclasses.fields(owner) if f.name == name)
    selector, lookup = variant_of(f)  # type: ignore[misc]
    chosen = getattr(owner, selector)
    setattr(owner, name, settings_as(lookup(chosen), getattr(owner, name), where, f"{selector} = {chosen!r}"))


def settings_as(cls: type[C], value: Any, where: str, chosen: str) -> C:
    """``value`` as an instance of ``cls``, the settings class of what ``chosen`` describes (e.g.
    ``"method = 'safeneuron'"``): None means its defaults, a mapping is loaded like a config section under the
    dotted key ``where`` (unknown keys refused), an instance of another class is refused."""
    if value is None:
        return cls()
    if isinstance(value, Mapping):
        return from_dict(cls, value, "config", prefix=f"{where}.")
    if type(value) is not cls:
        raise ConfigError(f"{where}: settings of type {type(value).__name__} given for {chosen}, "
                          f"which takes {cls.__name__}.")
    return value


@dataclass(frozen=True)
class Removed:
    """A key taken out of its section, or with ``value`` only that value of a key that stays. Setting it
    fails at load with a message naming the key, ``what`` it was, where its results stay (``record``, e.g.
    "docs/results.md §5") and the last ``commit`` that had it. ``inert`` values configured nothing (the empty
    settings section published configs carry): they are dropped without a word."""

    what: str
    record: str
    commit: str
    value: Any = None
    inert: Callable[[Any], bool] = lambda value: False

    def refused(self, value: Any) -> bool:
        return value == self.value if self.value is not None else not self.inert(value)

    def message(self, source: str, key: str, value: Any) -> str:
        setting = f"{key} = {value!r}" if self.value is not None else f"'{key}'"
        return (f"{source}: {setting} was removed ({self.what}). Its results stay in {self.record}; the code last "
                f"existed in commit {self.commit} (git show {self.commit}). Drop the key.")


@dataclass(frozen=True)
class Moved:
    """A key moved within its section to the dotted key ``to`` (relative to the section): still read at its
    old place, with a warning naming the new one; ``record`` says why (e.g. the results it reproduces)."""

    to: str
    record: str


def key_changes(cls: Any) -> Mapping[str, Removed | Moved]:
    """``{key: change}`` declared by a config class (its ``KEY_CHANGES`` class attribute; empty if none)."""
    return getattr(cls, "KEY_CHANGES", {})


def migrate_keys(cls: Any, data: Mapping[str, Any], source: str = "config", prefix: str = "",
                 warn: bool = True) -> dict[str, Any]:
    """``data`` (a mapping of ``cls``'s keys, e.g. a config file or a run's stored config) with the key changes
    of ``cls`` and of every nested section applied: a moved key goes to its new place (a warning names both
    unless ``warn`` is false; given at both places it is refused), an inert removed key is dropped, any other
    removed key or value raises :class:`ConfigError`. Other keys are left for :func:`from_dict` to check."""
    out = dict(data)
    for key, change in key_changes(cls).items():
        if key not in out:
            continue
        if isinstance(change, Removed):
            if change.refused(out[key]):
                raise ConfigError(change.message(source, f"{prefix}{key}", out[key]))
            if change.value is None:
                del out[key]
            continue
        value, parts = out.pop(key), change.to.split(".")
        node = out
        for part in parts[:-1]:
            node[part] = dict(node[part]) if isinstance(node.get(part), Mapping) else {}
            node = node[part]
        if parts[-1] in node:
            raise ConfigError(f"{source}: '{prefix}{key}' moved to '{prefix}{change.to}' and both are given; keep "
                              f"only '{prefix}{change.to}'.")
        node[parts[-1]] = value
        if warn:
            log.warning("%s: '%s%s' moved to '%s%s' (%s); read from the old place this time; write the new one.", source,
                        prefix, key, prefix, change.to, change.record)
    if dataclasses.is_dataclass(cls):
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if _is_dataclass_type(hints.get(f.name)) and isinstance(out.get(f.name), Mapping):
                out[f.name] = migrate_keys(hints[f.name], out[f.name], source, f"{prefix}{f.name}.", warn)
    return out


def _migrate_override(cls: Any, key: str, value: Any, source: str) -> tuple[str, Any] | None:
    """A ``--set`` key and value after the key changes of the sections the dotted key passes through
    (:func:`migrate_keys`); None for an inert removed key."""
    parts, done, tp, i = key.split("."), [], cls, 0
    while i < len(parts) and _is_dataclass_type(tp):
        change = key_changes(tp).get(parts[i])
        if isinstance(change, Moved):
            log.warning("%s: '%s' moved to '%s' (%s); read from the old place this time; write the new one.", source,
                        ".".join([*done, parts[i]]), ".".join([*done, change.to]), change.record)
            parts[i:i + 1] = change.to.split(".")
            continue
        if isinstance(change, Removed):
            last = i == len(parts) - 1
            if (change.value is None and not last) or (last and change.refused(value)):
                raise ConfigError(change.message(source, ".".join([*done, parts[i]]), value))
            if change.value is None:
                return None
        done.append(parts[i])
        tp, i = get_type_hints(tp).get(parts[i]), i + 1
    dotted = ".".join([*done, *parts[i:]])
    if i == len(parts) and _is_dataclass_type(tp) and isinstance(value, Mapping):
        value = migrate_keys(tp, value, source, f"{dotted}.")
    return dotted, value


def require(where: str, value: Any, ok: bool, expected: str) -> None:
    """A range check of a config value: ``ConfigError("<where> = <value>; expected <expected>.")`` unless
    ``ok``. In a loaded config non-finite numbers never reach it (:func:`load_config` refuses them anywhere)."""
    if not ok:
        raise ConfigError(f"{where} = {value!r}; expected {expected}.")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str, source: str = "config") -> Any:
    """Check/convert ``value`` for type ``tp``; ``where`` is the dotted key used in messages."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where, source) if len(args) == 1 else value
    if _is_dataclass_type(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {where}: expected a mapping, got {type(value).__name__}.")
        return from_dict(tp, value, source, prefix=f"{where}.")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {where}: expected a list, got {value!r}.")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]", source) if item is not Any else v for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {where}: expected true or false, got {value!r}.")
    if tp in (int, float):
        if isinstance(value, str):  # YAML 1.1 reads 5e-6 (no dot) as text; other text fails just below
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {where}: expected a number, got {value!r}.")
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{source}: {where}: expected an integer, got {value!r}.")
        return tp(value)
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{source}: {where}: expected text, got {value!r}.")
        return str(value)
    return value


def from_dict(cls: type[C], data: Mapping[str, Any], source: str = "config", prefix: str = "") -> C:
    """Build ``cls`` from a mapping, rejecting unknown keys with suggestions."""
    data = migrate_keys(cls, data, source, prefix)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    variants: list[str] = []
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{hint}. Keys here: {', '.join(fields)}.")
        if variant_of(fields[key]) is not None:
            variants.append(key)
        else:
            kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}", source)
    for key in variants:  # typed by the selector's (already coerced) value, errors naming the source
        selector, lookup = variant_of(fields[key])  # type: ignore[misc]
        chosen = kwargs[selector] if selector in kwargs else fields[selector].default
        value = data[key]
        try:
            chosen_cls = lookup(chosen)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {prefix}{selector}: {exc}") from None
        kwargs[key] = (from_dict(chosen_cls, value, source, prefix=f"{prefix}{key}.") if isinstance(value, Mapping)
                       else chosen_cls() if value is None else value)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'}: {exc}") from None
    except ConfigError as exc:  # a range check of the section: say where it came from and which section
        msg, where = str(exc), prefix.rstrip(".")
        if where and where not in msg:
            msg = f"{where}: {msg}"
        raise ConfigError(msg if msg.startswith(f"{source}:") else f"{source}: {msg}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    out = dataclasses.asdict(cfg)
    return _plain(out)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _without_variants(cls: Any, d: dict[str, Any]) -> dict[str, Any]:
    """``d`` (a dumped ``cls``) with every variant field emptied, at any depth: the defaults a file is merged
    onto must not carry the default method's settings into another method's section."""
    hints = get_type_hints(cls)
    out = dict(d)
    for f in dataclasses.fields(cls):
        if variant_of(f) is not None:
            out[f.name] = {}
        elif _is_dataclass_type(hints.get(f.name)) and isinstance(out.get(f.name), dict):
            out[f.name] = _without_variants(hints[f.name], out[f.name])
    return out


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set identify.params.tau_sas=2.5")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(cls: type[C], path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None,
                explicit: Mapping[str, Any] | None = None) -> C:
    """Defaults < YAML file < ``--set`` overrides < explicit options (already parsed CLI flags)."""
    data: dict[str, Any] = {}
    where = "command line"
    if path is not None:
        p = Path(path)
        where = str(p)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist.")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: invalid YAML ({str(exc).splitlines()[0]}).") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(loaded).__name__}.")
        data = migrate_keys(cls, loaded, where)
    # key changes applied before the defaults are merged in (which fill a moved key's new place)
    defaults = _without_variants(cls, to_dict(cls()))  # type: ignore[call-arg]
    merged = _merge(defaults, data)
    given = [(parse_override(item), f"--set {item.split('=', 1)[0].strip()}") for item in overrides or []]
    given += [((key, value), "command line") for key, value in (explicit or {}).items()]
    for (key, value), source in given:
        migrated = _migrate_override(cls, key, value, source)
        if migrated is not None:
            _set_dotted(merged, *migrated)
    _refuse_non_finite(merged, where)
    # report unknown keys against the file when they came from it
    return from_dict(cls, merged, where)


def _refuse_non_finite(value: Any, source: str, key: str = "") -> None:
    """NaN and infinities are never valid settings (a NaN threshold silently selects nothing, and NaN != NaN
    breaks resuming): refuse them anywhere in the config, dict-valued options included, naming the key."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {key} = {value!r}: numbers must be finite.")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _refuse_non_finite(v, source, f"{key}.{k}" if key else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _refuse_non_finite(v, source, f"{key}[{i}]")


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
