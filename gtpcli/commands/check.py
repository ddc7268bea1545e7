"""`gtpcli check`: measure what a spec names and compare it with a baseline, metric by metric.

Deterministic metrics (MACs, parameters, token schedule, the method's analytic overhead) must match
within a tiny relative tolerance, in either direction. Speed is compared only as the speed-up over the
stock model timed in the same interleaved rounds (absolute img/s differ between machines), and only a drop
fails: one larger than the rounds' own spread (`speed_tolerance`), unless the spec sets a tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from ..config.ranges import parse_values, threshold_values
from ..config.run import RunConfig
from ..errors import GtpcliError
from ..files import atomic_write, load_data

DETERMINISTIC = {"macs": 0.0, "params": 0.0, "tokens": 0.0, "overhead_macs": 0.0}
HIGHER_IS_BETTER = {"speedup": None}  # None: derived from the rounds' spread, see speed_tolerance
METRICS = {**DETERMINISTIC, **HIGHER_IS_BETTER}
SPREAD_FLOOR = 0.05  # the smallest speed-up tolerance derived from the rounds
SPEC_KEYS = {"models": list, "methods": list, "P": (str, int, list), "metrics": list, "tolerances": dict,
             "speed": dict, "delta": (str, int, float, list), "data": str}
SPEED_KEYS = {"batch_size": 1, "runs": 1, "rounds": 1, "warmup": 0}  # key: smallest value
BASELINE_FORMATS = ("json", "yaml")
STOCK = "stock"
# What each metric can change with, so that a baseline from another machine is flagged only where it
# matters. MACs: the model's definition (timm) and the operators its forward traces to (torch: fvcore
# counts the traced graph). Parameters, token schedules and the analytic overhead follow from timm's
# model definition alone. A speed-up depends on everything about the machine and the run. The CPU
# model, core count, threads and Python version never change a deterministic metric.
DEPENDS_ON = {
    "macs": ("torch", "timm"),
    "params": ("timm",),
    "tokens": ("timm",),
    "overhead_macs": ("timm",),
    "speedup": ("torch", "timm", "device", "device_name", "dtype", "amp", "compile", "batch_size", "threads", "cpus", "fused_attn"),
}


@dataclass
class CheckSpec:
    models: list[str]
    methods: list[str]
    Ps: list[int]
    metrics: list[str]
    tolerances: dict[str, float]
    speed: dict[str, int] = field(default_factory=dict)
    sweeps: dict[str, list[float]] = field(default_factory=dict)   # adaptive methods' points (TPC: delta)
    data: Path | None = None         # images behind an adaptive method's counts (seeded random ones otherwise)


def load_spec(path: Path) -> CheckSpec:
    """A `check:` section, in its own YAML file or in a profile (whose model it then checks)."""
    from ..config.options import methods as method_names

    data = load_data(path, "check spec", ("yaml", "json"))
    if not isinstance(data, dict) or not isinstance(data.get("check"), dict):
        raise GtpcliError(f"{path}: missing key 'check' (a mapping with {', '.join(SPEC_KEYS)})")
    spec = data["check"]
    for key, value in spec.items():
        if key not in SPEC_KEYS:
            raise GtpcliError(f"{path}: unknown key 'check.{key}' (expected one of {', '.join(SPEC_KEYS)})")
        if not isinstance(value, SPEC_KEYS[key]) or isinstance(value, bool):
            raise GtpcliError(f"{path}: key 'check.{key}' has the wrong type ({type(value).__name__})")
    models = spec.get("models") or ([str(path)] if "model" in data else [])
    if not models:
        raise GtpcliError(f"{path}: missing key 'check.models'")
    for model in models:
        if not isinstance(model, str) or not model:
            raise GtpcliError(f"{path}: key 'check.models' must list model names, got {model!r}")
    methods = spec.get("methods", ["gtp"])
    if not methods or not all(isinstance(m, str) for m in methods):
        raise GtpcliError(f"{path}: key 'check.methods' must list method names, got {methods!r}")
    method_names(",".join(methods), f"{path}: key 'check.methods'")
    metrics = spec.get("metrics", list(DETERMINISTIC))
    for name in list(metrics) + list(spec.get("tolerances", {})):
        if name not in METRICS:
            raise GtpcliError(f"{path}: unknown metric {name!r} in 'check' (known: {', '.join(METRICS)})")
    for key, value in spec.get("speed", {}).items():
        if key not in SPEED_KEYS:
            raise GtpcliError(f"{path}: unknown key 'check.speed.{key}' (expected {', '.join(SPEED_KEYS)})")
        if not isinstance(value, int) or isinstance(value, bool) or value < SPEED_KEYS[key]:
            raise GtpcliError(f"{path}: key 'check.speed.{key}' must be an integer >= {SPEED_KEYS[key]}, got {value!r}")
    given = spec.get("tolerances", {})
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 for v in given.values()):
        raise GtpcliError(f"{path}: key 'check.tolerances' must map metrics to numbers >= 0")
    tolerances = {**METRICS, **given}
    sweeps = {}
    if "delta" in spec:  # the halting threshold of the chosen input-dependent method swept by delta, as --delta reads it
        from ..methods import REGISTRY

        owner = next((REGISTRY[m] for m in methods if m in REGISTRY and REGISTRY[m].sweep_key == "delta"), None)
        if owner is None:
            raise GtpcliError(f"{path}: key 'check.delta' is the sweep axis of a method with a delta threshold "
                              "(tpc): add it to 'check.methods'")
        delta = next(h for h in owner.hparams if h.name == "delta")
        sweeps["delta"] = threshold_values(delta, spec["delta"], f"{path}: key 'check.delta'")
    data = Path(spec["data"]) if "data" in spec else None
    if data is not None and not data.is_dir():
        raise GtpcliError(f"{path}: key 'check.data': not a directory: {data}")
    return CheckSpec(models, methods, parse_values(spec.get("P", "0,8"), f"{path}: key 'check.P'"),
                     metrics, tolerances, spec.get("speed", {}), sweeps, data)


def measure(spec: CheckSpec, run: RunConfig, on_point) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows for every (model, method, P) of the spec, measured as `gtpcli profile` measures them, on the
    device (and in the precision) the run configuration gives."""
    from ..config.options import amp
    from ..measure import speed, sweep
    from ..models import backbones

    fixed = {key: value for key, value in spec.speed.items() if key in ("batch_size", "warmup")}
    timing = replace(speed.Timing.default(speed.resolve_device(run.device), run.dtype, amp(run.amp, run.dtype)),
                     **fixed).budget(spec.speed.get("runs"), spec.speed.get("rounds"))
    import torch

    rows = []
    for name in spec.models:
        profile, timm_name = backbones.resolve(name)
        torch.manual_seed(0)  # random weights are the same every run: an adaptive method's counts depend on them
        cfg = sweep.SweepConfig(model=profile.name if profile else timm_name, timm_name=timm_name, profile=profile,
                                methods=spec.methods, Ps=spec.Ps, timing=timing, flops="macs" in spec.metrics,
                                speed="speedup" in spec.metrics, data=spec.data, sweeps=spec.sweeps,
                                compile=run.compile_mode if run.compile else None, seed=run.seed)
        rows += sweep.run(cfg, [], lambda _: None, on_point, lambda text: None)
    return rows, speed.fingerprint(timing, run.compile_mode if run.compile else None, run.seed)


def verdicts(spec: CheckSpec, rows: list[dict], env: dict, baseline: dict) -> dict[str, Any]:
    """The whole check as data: one verdict per metric, and the environment differences that matter."""
    found = compare(spec, rows, baseline["rows"])
    notes = [SPREAD_NOTE] if any(v.get("tolerance_from") == "spread" for v in found) else []
    return {"rows": found, "env": env, "environment_differs": environment_gaps(env, baseline.get("env", {}), spec.metrics),
            "notes": notes}


SPREAD_NOTE = (f"speed-up tolerance (spread): the interquartile range over median of this run's per-round speed-ups "
               f"plus the baseline's, at least {SPREAD_FLOOR:.0%}; a smaller drop is within what the rounds show as "
               "noise (set check.tolerances.speedup to fix it)")


def compare(spec: CheckSpec, rows: list[dict], baseline: list[dict]) -> list[dict[str, Any]]:
    """One verdict per (model, method, P, metric). The stock row is compared too (a backbone whose MACs
    or parameters change, say with a timm upgrade, is a regression named `stock`); its speed-up over
    itself is 1 by definition, so speed is not compared there."""
    index: dict[tuple, list[dict]] = {}
    for r in baseline:
        index.setdefault((r["model"], r["method"], point(r)), []).append(r)
    verdicts = []
    for row in rows:
        key = (row["model"], row["method"], point(row))
        base = _baseline_row(index.get(key, []), row)
        for metric in spec.metrics:
            if row["method"] == STOCK and metric in HIGHER_IS_BETTER:
                continue
            tolerance = spec.tolerances[metric]
            if tolerance is None:  # a speed-up: the rounds say how far it may move by chance
                tolerance = speed_tolerance(row, base)
                verdicts.append(judge(key, metric, base.get(metric), row.get(metric), tolerance) | {"tolerance_from": "spread"})
            else:
                verdicts.append(judge(key, metric, base.get(metric), row.get(metric), tolerance))
    return verdicts


def speed_tolerance(row: dict, base: dict) -> float:
    """How far a speed-up may drop before it is called a regression, from the noise both measurements show:
    the spread of this run's per-round speed-ups (interquartile range over median) plus the baseline's, at
    least SPREAD_FLOOR. A row without quartiles (the sequential order, an older baseline) counts its img/s
    spread instead, or nothing."""
    return round(max(SPREAD_FLOOR, relative_spread(row) + relative_spread(base)), 3)


def relative_spread(row: dict) -> float:
    for low, middle, high in (("speedup_q1", "speedup", "speedup_q3"), ("img_s_q1", "img_s", "img_s_q3")):
        if all(isinstance(row.get(k), (int, float)) for k in (low, middle, high)) and row[middle]:
            return (row[high] - row[low]) / row[middle]
    return 0.0


def point(row: dict) -> int | str:
    """P, or an adaptive method's own setting ("delta=0.01"): E[MACs] and mean counts are gated there."""
    return row["setting"] if row.get("adaptive") else row["P"]


def _baseline_row(candidates: list[dict], row: dict) -> dict:
    """The baseline row of this point: the one with the same hyperparameters, or the only one."""
    same = [r for r in candidates if r.get("hparams", {}) == row.get("hparams", {})]
    if same or len(candidates) == 1:
        return (same or candidates)[-1]
    where = f"{row['model']} {row['method']} {row['setting'] if row.get('adaptive') else 'P=' + str(row['P'])}"
    if not candidates:
        raise GtpcliError(f"the baseline has no row for {where} (re-create it with --update-baseline)")
    raise GtpcliError(f"the baseline has {len(candidates)} rows for {where} and none with the spec's "
                      f"hyperparameters {row.get('hparams', {})} (re-create it with --update-baseline)")


def judge(key, metric: str, base, now, tolerance: float) -> dict[str, Any]:
    verdict = {"model": key[0], "method": key[1], "P": key[2], "metric": metric, "baseline": base, "now": now,
               "delta": None, "tolerance": tolerance}
    if base is None or now is None:
        return verdict | {"verdict": "fail", "why": "not measured" if now is None else "not in the baseline"}
    if isinstance(base, list) or isinstance(now, list):
        ok = base == now
        verdict["delta"] = None if ok else [n - b for n, b in zip(now, base)] if len(now) == len(base) else "length"
        return verdict | {"verdict": "pass" if ok else "fail"}
    delta = now - base
    relative = abs(delta) / abs(base) if base else abs(delta)
    verdict["delta"] = delta
    if metric in HIGHER_IS_BETTER:
        ok = delta >= 0 or relative <= tolerance
    else:
        ok = relative <= tolerance
    return verdict | {"verdict": "pass" if ok else "fail"}


def environment_gaps(now: dict, baseline_env: dict, metrics: list[str] | None = None) -> list[str]:
    """The environment fields that differ from the baseline's AND can change one of the checked metrics
    (see DEPENDS_ON), each with the metrics it can change; a different CPU under a MACs-only check is
    not news."""
    metrics = list(METRICS) if metrics is None else metrics
    gaps = []
    keys = dict.fromkeys(k for m in metrics for k in DEPENDS_ON[m])
    for key in keys:
        if key in baseline_env and baseline_env.get(key) != now.get(key):
            affected = ", ".join(m for m in metrics if key in DEPENDS_ON[m])
            gaps.append(f"{key}: baseline {baseline_env.get(key)!r}, now {now.get(key)!r} (can change {affected})")
    return gaps


def load_baseline(path: Path) -> dict[str, Any]:
    """A baseline written by --update-baseline or `gtpcli profile --output`, checked row by row so a bad
    file is one line, not a crash halfway through the comparison."""
    if not path.exists():
        raise GtpcliError(f"baseline not found: {path} (create it with --update-baseline {path})")
    data = load_data(path, "baseline", BASELINE_FORMATS)
    shape = "a baseline is what --update-baseline or `gtpcli profile --output` writes ({'rows': [...], 'env': {...}})"
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise GtpcliError(f"{path}: {shape}")
    if not isinstance(data.get("env", {}), dict):
        raise GtpcliError(f"{path}: 'env' must be a mapping, got {type(data['env']).__name__}")
    for at, row in enumerate(data["rows"]):
        problem = _row_problem(row)
        if problem:
            raise GtpcliError(f"{path}: rows[{at}] {problem}; {shape}")
    return data


def _row_problem(row: Any) -> str | None:
    if not isinstance(row, dict):
        return f"is a {type(row).__name__}, not a mapping"
    for key, kind in (("model", str), ("method", str), ("P", int)):
        if key not in row:
            return f"has no {key!r}"
        if key == "P" and row.get("adaptive") and isinstance(row.get("setting"), str):
            continue  # an input-dependent method's point is its setting, P is null
        if not isinstance(row[key], kind) or isinstance(row[key], bool):
            return f"has {key} {row[key]!r} (expected {kind.__name__})"
    if not isinstance(row.get("hparams", {}), dict):
        return "has hparams that are not a mapping"
    for metric in METRICS:
        value = row.get(metric)
        if value is None:
            continue
        if metric == "tokens":  # integers, or an adaptive method's mean counts
            if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      for v in value):
                return f"has tokens {value!r} (expected a list of numbers)"
        elif not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"has {metric} {value!r} (expected a number)"
    return None


def write_junit(result: dict[str, Any], path: Path) -> None:
    atomic_write(path, junit_xml(result), "--junit")


def junit_xml(result: dict[str, Any]) -> str:
    cases = []
    for v in result["rows"]:
        at = v["P"] if isinstance(v["P"], str) else f"P={v['P']}"
        name = quoteattr(f"{v['model']} {v['method']} {at} {v['metric']}")
        message = quoteattr(f"baseline {v['baseline']!r}, now {v['now']!r}, tolerance {v['tolerance']}")
        body = "" if v["verdict"] == "pass" else f"<failure message={message}/>"
        cases.append(f'  <testcase classname="gtpcli.check" name={name}>{body}</testcase>')
    failures = sum(v["verdict"] != "pass" for v in result["rows"])
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="gtpcli check" tests="{len(cases)}" '
            f'failures="{failures}">\n' + "\n".join(cases) + "\n</testsuite>\n")
