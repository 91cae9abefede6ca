"""The one settings idiom: every config file the product reads is loaded and checked here.

Two halves, both layer 0 (they import nothing of elm-data above ``errors``):

- :func:`load_yaml` / :func:`load_mapping` read a YAML file (a local path or an fsspec URI) into plain Python
  values. The bytes are bounded (``MAX_CONFIG_BYTES``) and must be UTF-8 (a bad byte is named by its offset);
  the YAML is read by PyYAML's *safe* loader, so no tag constructs a Python object (``!!python/...`` is
  refused); a mapping may not repeat a key; and aliases may add at most ``MAX_ALIAS_NODES`` nodes to the
  document once expanded (anchors for a few shared values work, an alias bomb is refused after one linear walk
  of the parsed node graph, before anything is built; a recursive alias is refused too).
- :class:`Settings` is a dataclass mixin: :meth:`Settings.from_mapping` refuses an unknown key naming the
  nearest valid one (``difflib.get_close_matches``), checks each value against its field's annotation
  (``int``, ``float``, ``str``, ``bool``, ``None``, ``Literal``, unions, ``list``/``tuple``/``dict`` of those,
  and nested ``Settings`` sections) and turns YAML lists into the tuples a field declares.
  :func:`resolve_path` is the one rule for a relative path in a config: it is relative to the config's folder.

Every refusal is a :class:`SettingsError` (an :class:`~elm_data.core.errors.InvalidValue`): one line, naming
the file and the key, so the command line exits 2. No production module calls ``yaml.*load`` itself
(``tests/test_settings.py`` checks that with ``ast``).
"""

from __future__ import annotations

import dataclasses
import difflib
import posixpath
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from elm_data.core.errors import InvalidValue, NotFound

# a config (mixture, train, targets, weights, matrix) is text a person wrote
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_ALIAS_NODES = 10_000  # nodes that aliases may add to a document once expanded
_MERGE_TAG = "tag:yaml.org,2002:merge"


class SettingsError(InvalidValue):
    """A config file or section that cannot be used as written; the message names the file and the key."""


# ---- reading YAML
# ---------------------------------------------------------------------------------------------
# libyaml's parser (fast, no recursion) under PyYAML's Python composer: libyaml's own composer recurses on
try:
    from yaml._yaml import CParser as _Parser  # the C stack and crashes the process on a deeply nested `[[[…`

    class _SafeLoader(
        yaml.composer.Composer, _Parser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver
    ):
        def __init__(self, stream: str) -> None:
            _Parser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _SafeLoader = yaml.SafeLoader  # type: ignore[assignment, misc]


class _StrictLoader(_SafeLoader):  # type: ignore[misc, valid-type]
    """The safe loader, refusing a key repeated within one mapping (merge keys ``<<`` excepted)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                line = key_node.start_mark.line + 1
                raise SettingsError(f"line {line}: key {key!r} appears twice in one mapping (keep one)")
            if isinstance(key, typing.Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def alias_growth(root: yaml.Node) -> int:
    """Nodes that aliases add when ``root`` is expanded into a tree: expanded size minus distinct nodes.

    One iterative walk of the node graph (each distinct node once, sizes memoised), so a document of ``n``
    nodes costs O(n) whatever it expands to. Raises :class:`SettingsError` on a recursive alias."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in size:
            continue
        kids = _children(node)
        if children_done:
            on_path.discard(id(node))
            size[id(node)] = 1 + sum(size[id(k)] for k in kids)
            continue
        if id(node) in on_path:
            raise SettingsError(
                f"line {node.start_mark.line + 1}: an alias refers to a node that contains it"
            )
        on_path.add(id(node))
        stack.append((node, True))
        for kid in kids:
            if id(kid) in on_path:
                raise SettingsError(
                    f"line {kid.start_mark.line + 1}: an alias refers to a node that contains it"
                )
            stack.append((kid, False))
    return size[id(root)] - len(size)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line from a PyYAML error: its problem and where (line and column, 1-based)."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = error.problem or error.context or "malformed"
        if isinstance(error, yaml.constructor.ConstructorError) and "constructor for the tag" in problem:
            problem += " (only plain YAML is read: no !!python or other custom tags)"
        return where + " ".join(problem.split())
    return " ".join(str(error).split())


def _read_bounded(f: typing.BinaryIO) -> bytes:
    """At most ``MAX_CONFIG_BYTES + 1`` bytes, read in 1 MiB pieces (no buffer of the limit's size up
    front)."""
    pieces, size = [], 0
    while size <= MAX_CONFIG_BYTES:
        piece = f.read(min(2**20, MAX_CONFIG_BYTES + 1 - size))
        if not piece:
            break
        pieces.append(piece)
        size += len(piece)
    return b"".join(pieces)


def _read_bytes(path: str | Path, what: str) -> bytes:
    text = str(path)
    try:
        if "://" in text:
            import fsspec

            with fsspec.open(text, "rb") as f:
                data = _read_bounded(f)
        else:
            with open(text, "rb") as f:
                data = _read_bounded(f)
    except FileNotFoundError:
        raise NotFound(f"{what} {text}: no such file") from None
    except IsADirectoryError:
        raise SettingsError(f"{what} {text}: is a folder, not a YAML file") from None
    except OSError as error:
        raise SettingsError(f"{what} {text}: cannot be read ({error.strerror or error})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise SettingsError(
            f"{what} {text}: larger than {MAX_CONFIG_BYTES // 2**20} MiB; a config is hand-written"
        )
    return data


def parse_yaml(text: str) -> Any:
    """Plain Python values from YAML ``text`` under the rules above (errors name no file: see
    :func:`load_yaml`)."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        growth = alias_growth(node)
        if growth > MAX_ALIAS_NODES:
            raise SettingsError(
                f"aliases expand the document by {growth:,} nodes (at most {MAX_ALIAS_NODES:,}); write it out"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        raise SettingsError(f"not valid YAML: {_yaml_problem(error)}") from None
    except RecursionError:
        raise SettingsError("nested too deeply to be a config") from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path, what: str = "config") -> Any:
    """The YAML document in ``path`` (local or fsspec URI), strictly: see the module's docstring.

    ``what`` names the kind of file in messages ("mixture", "--weights file", ...)."""
    data = _read_bytes(path, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        byte = data[error.start]
        raise SettingsError(
            f"{what} {path}: not UTF-8 text (byte 0x{byte:02x} at offset {error.start})"
        ) from None
    try:
        return parse_yaml(text.removeprefix("\ufeff"))
    except SettingsError as error:
        raise SettingsError(f"{what} {path}: {error}") from None


def load_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """:func:`load_yaml` of a file that must hold a mapping (an empty file is an empty mapping)."""
    raw = load_yaml(path, what)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SettingsError(f"{what} {path}: expected a mapping of settings, got {describe(raw)}")
    return raw


# ---- paths
# --------------------------------------------------------------------------------------------------
def config_dir(path: str | Path) -> str:
    """The folder a config file's relative paths resolve against (absolute; a URI's parent for a URI)."""
    text = str(path)
    return posixpath.dirname(text) if "://" in text else str(Path(text).resolve().parent)


def resolve_path(value: str, base_dir: str | Path) -> str:
    """``value`` as written in a config whose folder is ``base_dir``: URIs and absolute paths unchanged,
    ``~`` expanded, anything else relative to ``base_dir``."""
    if "://" in value:
        return value
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    base = str(base_dir)
    return posixpath.join(base, value) if "://" in base else str((Path(base) / path).resolve())


# ---- typed settings
# -----------------------------------------------------------------------------------------
def describe(value: Any) -> str:
    """A value as a message shows it: short, one line."""
    text = repr(value) if not isinstance(value, (dict, list, tuple)) else type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def nearest(key: str, known: typing.Iterable[str]) -> str | None:
    """The valid name closest to a misspelt ``key``, or None when none is close."""
    matches = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def join(where: str, key: str | int) -> str:
    """The dotted path of a key in a section: ``join("sources[0]", "weight")`` is ``sources[0].weight``."""
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def check_keys(raw: Mapping[Any, Any], known: typing.Iterable[str], where: str = "") -> None:
    """Refuse a key of ``raw`` that is not in ``known``, naming the nearest valid one."""
    known = sorted(known)
    for key in raw:
        if not isinstance(key, str):
            raise SettingsError(f"{where or 'config'}: keys are names, got {key!r}")
        if key not in known:
            guess = nearest(key, known)
            hint = f"did you mean {guess!r}?" if guess else f"valid keys: {', '.join(known)}"
            raise SettingsError(f"{where + ': ' if where else ''}unknown key {key!r}; {hint}")


def type_name(hint: Any) -> str:
    """An annotation in words: ``int | None`` is "an integer or null"."""
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false", dict: "a mapping"}
    names |= {list: "a list", tuple: "a list", type(None): "null"}
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if isinstance(hint, type) and issubclass(hint, Settings):
        return "a mapping"
    return names.get(origin or hint, getattr(hint, "__name__", str(hint)))


def _scalar_matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(hint, type) and isinstance(value, hint)


def matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits annotation ``hint`` (bool is no number; an int is a float; elements are
    checked)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        element = args[0] if args else Any
        return all(matches(v, element) for v in value)
    if origin is dict:
        key_hint, value_hint = args or (Any, Any)
        return isinstance(value, dict) and all(
            matches(k, key_hint) and matches(v, value_hint) for k, v in value.items()
        )
    if isinstance(hint, type) and issubclass(hint, Settings):
        return isinstance(value, (Mapping, hint))
    return _scalar_matches(value, hint)


def _refuse(value: Any, hint: Any, where: str) -> typing.NoReturn:
    raise SettingsError(f"{where}: expected {type_name(hint)}, got {describe(value)}")


def convert(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against ``hint`` (elements too, each named by its place): nested sections built,
    lists made tuples where a tuple is declared."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        fitting = [a for a in args if matches(value, a)]
        return convert(value, fitting[0], where) if fitting else _refuse(value, hint, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            _refuse(value, hint, where)
        items = [convert(v, args[0] if args else Any, join(where, i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            _refuse(value, hint, where)
        key_hint, value_hint = args or (Any, Any)
        return {
            convert(k, key_hint, where): convert(v, value_hint, join(where, str(k))) for k, v in value.items()
        }
    if isinstance(hint, type) and issubclass(hint, Settings):
        if isinstance(value, hint):
            return value
        return (
            hint.from_mapping(value, where=where)
            if isinstance(value, Mapping)
            else _refuse(value, hint, where)
        )
    return value if matches(value, hint) else _refuse(value, hint, where)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


_S = typing.TypeVar("_S", bound="Settings")


class Settings:
    """Mixin for a dataclass of settings read from a config: see the module's docstring.

    Fields whose metadata says ``{"setting": False}`` (e.g. ``base_dir``) are not keys of the config."""

    @classmethod
    def setting_types(cls) -> dict[str, Any]:
        """``{key: annotation}`` of every field a config may set."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.metadata.get("setting", True)}  # type: ignore[arg-type]

    @classmethod
    def check_mapping(cls, raw: Any, where: str = "") -> dict[str, Any]:
        """``raw`` as keyword arguments: a mapping of known keys whose values fit their annotations."""
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise SettingsError(f"{where or 'config'}: expected a mapping of settings, got {describe(raw)}")
        types_ = cls.setting_types()
        check_keys(raw, types_, where)
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        missing = [f.name for f in fields if f.name in types_ and f.name not in raw and _required(f)]
        if missing:
            raise SettingsError(f"{where or 'config'}: lacks {', '.join(repr(m) for m in missing)}")
        return {key: convert(value, types_[key], join(where, key)) for key, value in raw.items()}

    @classmethod
    def from_mapping(cls: type[_S], raw: Any, where: str = "", **extra: Any) -> _S:
        """An instance from a config section ``raw`` (None = all defaults); ``extra`` sets non-setting
        fields."""
        return cls(**cls.check_mapping(raw, where), **extra)

    def check_types(self, where: str = "") -> None:
        """Refuse a field whose value does not fit its annotation (for instances made in code, not from
        YAML)."""
        for key, hint in self.setting_types().items():
            value = getattr(self, key)
            if not matches(value, hint):
                raise SettingsError(f"{join(where, key)}: expected {type_name(hint)}, got {describe(value)}")
