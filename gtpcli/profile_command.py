"""The glue of `gtpcli profile`: options to a sweep, a progress bar, a result file kept current."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .errors import GtpcliError
from .ranges import parse_values
from .report import console, emit, render_profile, write


@dataclass
class ProfileOptions:
    model: str
    P: str | None
    method: str | None
    gtp_hparams: dict[str, Any]
    prop_attn: bool | None
    checkpoint: Path | None
    strict: bool
    device: str
    dtype: str
    batch_size: int | None
    img_size: int | None
    runs: int | None
    warmup: int | None
    speed: bool
    flops: bool
    resume: bool
    fmt: str
    output: Path | None
    data: Path | None = None
    limit: int | None = None
    fidelity: bool = False


def sweep_config(opts: ProfileOptions):
    from . import backbones, sweep
    from .measure import speed

    profile, timm_name = backbones.resolve(opts.model)
    if opts.dtype not in ("float32", "float16", "bfloat16"):
        raise GtpcliError(f"--dtype must be float32, float16 or bfloat16, got {opts.dtype!r}")
    if opts.checkpoint is not None and not opts.checkpoint.is_file():
        raise GtpcliError(f"checkpoint not found: {opts.checkpoint}")
    timing = speed.Timing.default(speed.resolve_device(opts.device), opts.dtype)
    overrides = {k: v for k, v in (("batch_size", opts.batch_size), ("runs", opts.runs), ("warmup", opts.warmup))
                 if v is not None}
    if any(v < (0 if k == "warmup" else 1) for k, v in overrides.items()):
        raise GtpcliError(f"--batch-size and --runs must be >= 1, --warmup >= 0, got {overrides}")
    timing = replace(timing, **overrides)
    methods = (opts.method or (profile.method if profile else "gtp")).split(",")
    Ps = parse_values(opts.P if opts.P is not None else (profile.P if profile else "0..8"), "--P")
    hparams = {"gtp": dict(opts.gtp_hparams), "tome": {}}
    if opts.prop_attn is not None:
        for values in hparams.values():
            values["prop_attn"] = opts.prop_attn
    if opts.fidelity and opts.data is None:
        raise GtpcliError("--fidelity needs --data DIR (any folder of images)")
    if opts.limit is not None and (opts.data is None or opts.limit < 1):
        raise GtpcliError("--limit N needs --data DIR and N >= 1")
    return sweep.SweepConfig(profile.name if profile else timm_name, timm_name, profile, methods, Ps, timing,
                             hparams, opts.checkpoint, opts.strict, opts.img_size, opts.flops, opts.speed,
                             opts.data, opts.limit, opts.fidelity)


def run_profile(opts: ProfileOptions) -> None:
    from . import sweep
    from .measure import speed

    cfg = sweep_config(opts)
    output = opts.output or Path("gtpcli-results") / f"{cfg.model.replace('/', '_')}.json"
    env = speed.fingerprint(cfg.timing)
    result: dict[str, Any] = {"model": cfg.model, "timm": cfg.timm_name,
                              "weights": str(cfg.checkpoint) if cfg.checkpoint else "random weights",
                              "rows": [], "env": env}
    saved = previous_rows(output, env) if opts.resume else []
    err = console(stderr=True)

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(cfg.model, total=len(cfg.points()))

        def save(rows: list[dict[str, Any]]) -> None:
            result["rows"] = rows
            write(result, output)
            progress.update(task, completed=len(rows))

        def starting(label: str) -> None:
            progress.update(task, description=f"{cfg.model}: {label}")

        try:
            sweep.run(cfg, saved, save, starting, lambda text: err.print(f"[yellow]warning:[/] {text}"))
        except KeyboardInterrupt:
            err.print(f"interrupted: {len(result['rows'])} finished points saved in {output}; "
                      "run the same command with --resume to continue")
            raise SystemExit(130)
    emit(result, opts.fmt, None, render_profile)
    note = "" if cfg.checkpoint or cfg.data else " (random weights: accuracy not measured)"
    err.print(f"saved {len(result['rows'])} points to {output}{note}")


def previous_rows(path: Path, env: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of an earlier run of the same setting, to skip on --resume."""
    if not path.is_file():
        return []
    try:
        text = path.read_text()
        old = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError):
        raise GtpcliError(f"--resume: cannot read {path} (only .json or .yaml results can be resumed)") from None
    keys = ("device", "dtype", "batch_size", "torch", "timm")
    if not isinstance(old, dict) or any(old.get("env", {}).get(k) != env[k] for k in keys):
        raise GtpcliError(f"--resume: {path} was measured in another setting ({', '.join(keys)} must match)")
    return old.get("rows", [])
