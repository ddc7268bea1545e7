"""The result file of `gtpcli profile`: nothing measured is ever lost.

One file holds the points of any number of runs of one setting (model, weights, device, dtype, autocast,
compile mode, torch and timm); batch size and image size are axes of the points, like P. A run adds its own points and updates those it measured again, field by field (a
`--no-speed` run never erases an img/s measured before); every other point in the file is kept. Each
save is a read-merge-write cycle under an advisory lock with an atomic replace, so concurrent runs into
one file keep every row. A file of another setting is refused, saying how it differs, before anything
is measured.
"""

from __future__ import annotations

import csv
import io
import json
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
    """A point: model, method, P and its hyperparameters, at its batch size and image size (sweep axes)."""
    return (row.get("model"), row.get("method"), row.get("P"),
            json.dumps(row.get("hparams") or {}, sort_keys=True, default=str),
            row.get("batch_size"), json.dumps(row.get("img_size")))


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


def merge_row(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The new measurement wins; what this run did not measure (None, or absent) is kept from before."""
    return {**old, **{k: v for k, v in new.items() if v is not None or k not in old}}


def merge_rows(existing: list[dict], mine: list[dict]) -> list[dict]:
    """`existing` with `mine` added or updated in place, in table order: stock, then each method by P."""
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
    return sorted(merged, key=lambda r: (r["method"] != STOCK,
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
