"""The user's files, read and written safely: every failure is one line (GtpcliError), YAML cannot
blow up (alias bombs are refused before any object is built), writes are atomic with a unique temporary
name, a lock serialises read-merge-write cycles, and output paths are checked before anything is measured."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from .errors import GtpcliError

MAX_BYTES = 16_000_000     # a profile, spec, baseline or result file larger than this is not ours
MAX_YAML_NODES = 200_000   # YAML nodes after expanding aliases (a billion-laughs file expands to 10^9)
FORMATS = ("json", "csv", "yaml")


def format_for(path: Path, allowed: tuple[str, ...] = FORMATS, option: str | None = None) -> str:
    """json, csv or yaml, from the file's suffix; anything else is refused."""
    suffix = path.suffix.lower().lstrip(".")
    fmt = {"yml": "yaml"}.get(suffix, suffix)
    if fmt not in allowed:
        names = ", ".join("." + f for f in allowed)
        where = f"{option} {path}" if option else str(path)
        raise GtpcliError(f"{where}: cannot tell the format from the suffix {path.suffix or '(none)'!r} "
                          f"(use {names})")
    return fmt


def read_text(path: Path, what: str) -> str:
    """The file's text, or one line saying why it cannot be read."""
    path = Path(path)
    try:
        if path.is_dir():
            raise GtpcliError(f"{what} {path} is a directory, not a file")
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise GtpcliError(f"{what} {path} is {size:,} bytes; refusing files over {MAX_BYTES:,} bytes")
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
        return data.decode("utf-8")
    except FileNotFoundError:
        raise GtpcliError(f"{what} not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise GtpcliError(f"{what} {path} is not a UTF-8 text file (byte {exc.start})") from None
    except OSError as exc:
        raise GtpcliError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


class _Loader(yaml.SafeLoader):
    """SafeLoader; `load_yaml` composes the node graph (aliases stay shared references, so composing is
    linear in the file's size), counts the nodes with aliases expanded, and only then builds objects."""


def load_yaml(text: str, source: str) -> Any:
    """Safe YAML with a bound on what aliases expand to (refused at once, in bounded memory)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded = _expanded_size(node)
        if expanded > MAX_YAML_NODES:
            raise GtpcliError(f"{source}: refused: its YAML aliases expand to more than {MAX_YAML_NODES:,} "
                              "nodes (an alias bomb?)")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise GtpcliError(f"{source}: not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise GtpcliError(f"{source}: refused: nested too deeply") from None
    finally:
        loader.dispose()


def _expanded_size(root: yaml.Node) -> int:
    """Nodes the document would have with every alias copied out, without copying (memoised, iterative)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done or not children:
            sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in children), MAX_YAML_NODES + 1)
            open_nodes.discard(id(node))
            continue
        if id(node) in open_nodes:
            raise yaml.YAMLError("an alias refers to a node that contains it (recursive YAML)")
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def load_data(path: Path, what: str, allowed: tuple[str, ...] = ("json", "yaml")) -> Any:
    """A JSON or YAML file (by suffix) as plain data."""
    path = Path(path)
    fmt = format_for(path, allowed, what)
    text = read_text(path, what)
    if fmt == "yaml":
        return load_yaml(text, f"{what} {path}")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise GtpcliError(f"{what} {path}: not valid JSON ({exc})") from None


def check_output(path: Path, option: str, allowed: tuple[str, ...] | None = FORMATS) -> Path:
    """Refuse, before anything is measured, an output whose suffix or place cannot work."""
    path = Path(path)
    if path.is_dir():
        raise GtpcliError(f"{option} {path} is a directory; give a file name")
    if allowed is not None:
        format_for(path, allowed, option)
    _check_writable_dir(path.parent, option, path)
    return path


def check_output_dir(path: Path, option: str) -> Path:
    """A directory the command will create or fill: not an existing file, and somewhere writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise GtpcliError(f"{option} {path} exists and is not a directory")
    _check_writable_dir(path, option, path)
    return path


def _check_writable_dir(folder: Path, option: str, target: Path) -> None:
    """The nearest existing ancestor must be a directory we can create files in (probed, not guessed:
    os.access is wrong for root and for read-only mounts)."""
    folder = Path(os.path.abspath(folder))
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise GtpcliError(f"{option} {target}: {existing} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".gtpcli-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise GtpcliError(f"{option} {target}: cannot write in {existing} ({exc.strerror or exc})") from None


def atomic_write(path: Path, text: str | bytes, what: str = "output") -> None:
    """Write through a unique temporary file in the same directory and os.replace it into place, so a
    reader never sees half a file and two writers never share a temporary file. Bytes (a figure) are
    written as they are, text as UTF-8."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise GtpcliError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text if isinstance(text, bytes) else text.encode("utf-8"))
        os.chmod(tmp, _file_mode(path))
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise GtpcliError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
        raise


def _file_mode(path: Path) -> int:
    """The mode a plain open() would give (mkstemp's files are private)."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An advisory lock (fcntl.flock) on the directory that holds `path`, for a read-merge-write cycle.
    Locking the directory rather than a side file leaves nothing behind; the critical sections are short."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; atomic replace still keeps every file whole
        yield
        return
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:
        raise GtpcliError(f"cannot open {folder} to lock it: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
