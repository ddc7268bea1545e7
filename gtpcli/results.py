"""The result file of `gtpcli profile`: nothing measured is ever lost.

One file holds the points of any number of runs of one setting (model, weights, device, dtype, autocast,
compile mode, torch and timm); batch size and image size are axes of the points, like P. A run adds its own points and updates those it measured again, field by field (a
`--no-speed` run never erases an img/s measured before); every other point in the file is kept. Each
save is a read-merge-write cycle under an advisory lock with an atomic replace, so concurrent runs into
one file keep every row. A file of another setting is refused, saying how it differs, before anything
is measured.

Without --output, a run's file is named by its setting (see `default_path`), so runs of different settings
never share, nor are refused, a default file, and a later run of the same setting (--resume) finds it again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any, Sequence

import yaml

from . import files
from .errors import GtpcliError
from .files import atomic_write, format_for

STOCK = "stock"
SETTING = ("model", "timm", "weights")   # top-level keys that must match (batch and image size are row axes)
OPTIONAL_SETTING = ("data", "limit")                # must match where both runs give them
ENV_SETTING = ("device", "dtype", "amp", "compile", "torch", "timm")


def row_key(row: dict[str, Any]) -> tuple:
    """A point: model, method, P and its hyperparameters, at its batch size and image size (sweep axes), and
    for `gtpcli compare` the target it was measured for (one setting may be the nearest to two targets)."""
    return (row.get("model"), row.get("method"), row.get("P"),
            json.dumps(row.get("hparams") or {}, sort_keys=True, default=str),
            row.get("batch_size"), json.dumps(row.get("img_size")), row.get("target_gmacs"))


def read(path: Path, option: str = "--output") -> dict[str, Any] | None:
    """The result file at `path`, checked to be one (None if there is none)."""
    if not Path(path).exists():
        return None
    data = files.load_data(path, f"{option} file", ("json", "yaml"))
    problem = _malformed(data)
    if problem:
        raise GtpcliError(f"{option} {path} is not a gtpcli profile result ({problem}); give another --output "
                          "or move that file away")
    return data


def _malformed(data: Any) -> str | None:
    if not isinstance(data, dict):
        return f"a {type(data).__name__}, not a mapping"
    if not isinstance(data.get("rows"), list):
        return "no 'rows' list"
    if not isinstance(data.get("env", {}), dict):
        return "'env' is not a mapping"
    for at, row in enumerate(data["rows"]):
        if not isinstance(row, dict):
            return f"rows[{at}] is a {type(row).__name__}, not a mapping"
        for key, kind in (("model", str), ("method", str), ("P", int)):
            if key == "P" and row.get(key, 0) is None:  # a method at its own schedule (EViT's keep rate, ...)
                continue
            if not isinstance(row.get(key), kind) or isinstance(row.get(key), bool):
                return f"rows[{at}].{key} is {row.get(key)!r}"
        if not isinstance(row.get("hparams", {}), dict):
            return f"rows[{at}].hparams is not a mapping"
    return None


def setting_gap(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """How the file's setting differs from this run's, in words; None if the points belong together."""
    for key in SETTING:
        if key in old and old.get(key) != new.get(key):
            return f"{key} {old.get(key)!r} (this run: {new.get(key)!r})"
    for key in OPTIONAL_SETTING:
        if old.get(key) is not None and new.get(key) is not None and old[key] != new[key]:
            return f"{key} {old[key]!r} (this run: {new[key]!r})"
    old_env, new_env = old.get("env", {}), new.get("env", {})
    for key in ENV_SETTING:
        if key in old_env and old_env.get(key) != new_env.get(key):
            return f"{key} {old_env.get(key)!r} (this run: {new_env.get(key)!r})"
    return None


def default_path(folder: Path, stem: str, header: dict[str, Any]) -> Path:
    """The result file of this run's setting in `folder` when no --output is given: `stem` (the model) with
    what sets this setting apart from the plain one (random weights, float32, CPU, no autocast, no compile)
    in words, e.g. deit_t-w-amp-bfloat16.json for --checkpoint w.pth --amp bf16. A
    setting the words do not tell apart from the file's (another torch or timm, a checkpoint of the same
    name in another folder) gets the same name with a short hash of every setting key added. A file that
    already holds this setting's points is found again: that name, or `stem`.json (before the names,
    every setting's default file)."""
    env = header.get("env") or {}
    weights = str(header.get("weights") or "random weights")
    words = [stem]
    if weights.startswith("pretrained"):
        words.append("pretrained")
    elif weights != "random weights":
        words.append(Path(weights).stem)
    if header.get("data"):
        words.append("data-" + Path(str(header["data"])).name)
    if header.get("limit") is not None:
        words.append(f"limit{header['limit']}")
    if str(env.get("device") or "cpu") != "cpu":
        words.append(str(env["device"]))
    if env.get("dtype", "float32") != "float32":
        words.append(str(env["dtype"]))
    if env.get("amp"):
        words.append(f"amp-{env['amp']}")
    if env.get("compile"):
        words.append("compile" + ("" if env["compile"] == "default" else f"-{env['compile']}"))
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", "-".join(words))
    readable = Path(folder) / f"{name}.json"
    setting = {key: header.get(key) for key in (*SETTING, *OPTIONAL_SETTING)}
    setting |= {f"env.{key}": env.get(key) for key in ENV_SETTING}
    digest = hashlib.sha256(json.dumps(setting, sort_keys=True, default=str).encode()).hexdigest()[:8]
    hashed = readable.with_name(f"{name}-{digest}.json")
    for path in dict.fromkeys((readable, hashed, Path(folder) / f"{stem}.json")):
        if _holds(path, header):
            return path
    return hashed if readable.exists() else readable


def _holds(path: Path, header: dict[str, Any]) -> bool:
    """Whether `path` is a result file of this setting (an unreadable or foreign file is not)."""
    try:
        old = read(path)
    except GtpcliError:
        return False
    return old is not None and setting_gap(old, header) is None


def merge_row(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The new measurement wins; what this run did not measure (None, or absent) is kept from before."""
    return {**old, **{k: v for k, v in new.items() if v is not None or k not in old}}


def merge_rows(existing: list[dict], mine: list[dict]) -> list[dict]:
    """`existing` with `mine` added or updated in place, in table order: stock, then each method by P (a
    comparison's rows by target first, the dearest first)."""
    merged = list(existing)
    index = {row_key(row): at for at, row in enumerate(merged)}
    for row in mine:
        key = row_key(row)
        if key in index:
            merged[index[key]] = merge_row(merged[index[key]], row)
        else:
            index[key] = len(merged)
            merged.append(row)
    methods = list(dict.fromkeys(r["method"] for r in merged if r["method"] != STOCK))
    return sorted(merged, key=lambda r: (-(r.get("target_gmacs") or 0), r["method"] != STOCK,
                                         methods.index(r["method"]) if r["method"] != STOCK else -1,
                                         -1 if r["P"] is None else r["P"]))  # own schedules: in the order measured


class ResultFile:
    """A profile result file shared with earlier (or concurrent) runs of the same setting."""

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path = Path(path)
        self.header = header          # model, timm, weights, img_size, data, limit, env
        self.before: set[tuple] = set()  # points in the file when this run started
        self.kept = 0                 # other points in the file at the last save
        self.total = 0

    def open(self) -> list[dict[str, Any]]:
        """The points already in the file; refuses a file that is not a result or of another setting."""
        with files.locked(self.path):
            old = read(self.path)
        if old is None:
            return []
        self._check(old)
        self.before = {row_key(row) for row in old["rows"]}
        self.kept = self.total = len(old["rows"])
        return old["rows"]

    def _check(self, old: dict[str, Any]) -> None:
        gap = setting_gap(old, self.header)
        if gap:
            raise GtpcliError(f"--output {self.path} holds {len(old['rows'])} points measured with {gap}; "
                              "give another --output (or move that file away), so that neither run's points are lost")

    def save(self, rows: list[dict[str, Any]]) -> None:
        """Merge this run's points into the file as it is now (another run may have written since)."""
        with files.locked(self.path):
            old = read(self.path)
            if old is not None:
                self._check(old)
            header = dict(self.header)
            for key in OPTIONAL_SETTING:
                if header.get(key) is None and old is not None and old.get(key) is not None:
                    header[key] = old[key]
            merged = merge_rows(old["rows"] if old else [], rows)
            write({**header, "rows": merged}, self.path, "--output")
        mine = {row_key(row) for row in rows}
        self.kept = sum(row_key(row) not in mine for row in merged)
        self.total = len(merged)

    def summary(self, rows: list[dict[str, Any]], resumed: int) -> str:
        """What this run did to the file, in one clause: new, measured again, resumed, kept."""
        measured = len(rows) - resumed
        again = sum(row_key(row) in self.before for row in rows) - resumed
        parts = [f"{count} {label}" for count, label in ((measured - again, "new"), (again, "measured again"),
                                                          (resumed, "resumed")) if count]
        text = f"{len(rows)} points" + (f" ({', '.join(parts)})" if parts else "")
        if self.kept:
            text += f"; kept {self.kept} other points already there ({self.total} in all)"
        return text


# --- results as text: JSON, YAML, CSV (rendering for people is gtpcli/report) ---------------------------------

def dumps(result: dict[str, Any], fmt: str) -> str:
    """The result as text in a machine-readable format."""
    if fmt == "json":
        return json.dumps(result, indent=2) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(result, sort_keys=False)
    if fmt == "csv":
        return rows_to_csv(result["rows"])
    raise GtpcliError(f"unknown format {fmt!r} (choose from json, csv, yaml)")


def rows_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()})
    return out.getvalue()


def write(result: dict[str, Any], path: Path, what: str = "output") -> None:
    """Write atomically (a unique temporary file, then os.replace), so an interrupted run never leaves
    half a file behind and two writers never share a temporary file."""
    atomic_write(path, dumps(result, format_for(path)), what)
