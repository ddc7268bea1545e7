"""`gtpcli check`: measure what a spec names and compare it with a baseline, metric by metric.

Deterministic metrics (MACs, parameters, token schedule, the method's analytic overhead) must match
within a tiny relative tolerance, in either direction. Speed is compared only as the speed-up over the
stock model measured in the same run (absolute img/s differ between machines), and only a drop fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import yaml

from .errors import GtpcliError
from .ranges import parse_values

DETERMINISTIC = {"macs": 0.0, "params": 0.0, "tokens": 0.0, "overhead_macs": 0.0}
HIGHER_IS_BETTER = {"speedup": 0.15}
METRICS = {**DETERMINISTIC, **HIGHER_IS_BETTER}
SPEC_KEYS = {"models": list, "methods": list, "P": (str, int, list), "metrics": list, "tolerances": dict,
             "speed": dict}
SPEED_KEYS = ("batch_size", "runs", "warmup")
ENV_KEYS = ("torch", "timm", "device_name", "dtype", "batch_size", "threads", "fused_attn")


@dataclass
class CheckSpec:
    models: list[str]
    methods: list[str]
    Ps: list[int]
    metrics: list[str]
    tolerances: dict[str, float]
    speed: dict[str, int] = field(default_factory=dict)


def load_spec(path: Path) -> CheckSpec:
    """A `check:` section, in its own YAML file or in a profile (whose model it then checks)."""
    if not path.is_file():
        raise GtpcliError(f"check spec not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise GtpcliError(f"{path}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("check"), dict):
        raise GtpcliError(f"{path}: missing key 'check' (a mapping with {', '.join(SPEC_KEYS)})")
    spec = data["check"]
    for key, value in spec.items():
        if key not in SPEC_KEYS:
            raise GtpcliError(f"{path}: unknown key 'check.{key}' (expected one of {', '.join(SPEC_KEYS)})")
        if not isinstance(value, SPEC_KEYS[key]):
            raise GtpcliError(f"{path}: key 'check.{key}' has the wrong type ({type(value).__name__})")
    models = spec.get("models") or ([str(path)] if "model" in data else [])
    if not models:
        raise GtpcliError(f"{path}: missing key 'check.models'")
    metrics = spec.get("metrics", list(DETERMINISTIC))
    for name in list(metrics) + list(spec.get("tolerances", {})):
        if name not in METRICS:
            raise GtpcliError(f"{path}: unknown metric {name!r} in 'check' (known: {', '.join(METRICS)})")
    for key in spec.get("speed", {}):
        if key not in SPEED_KEYS:
            raise GtpcliError(f"{path}: unknown key 'check.speed.{key}' (expected {', '.join(SPEED_KEYS)})")
    tolerances = {**METRICS, **spec.get("tolerances", {})}
    if any(not isinstance(v, (int, float)) or v < 0 for v in tolerances.values()):
        raise GtpcliError(f"{path}: key 'check.tolerances' must map metrics to numbers >= 0")
    return CheckSpec(models, spec.get("methods", ["gtp"]), parse_values(spec.get("P", "0,8"), "check.P"),
                     metrics, tolerances, spec.get("speed", {}))


def measure(spec: CheckSpec, device: str, on_point) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows for every (model, method, P) of the spec, measured as `gtpcli profile` measures them."""
    from . import backbones, sweep
    from .measure import speed

    timing = replace(speed.Timing.default(speed.resolve_device(device)), **spec.speed)
    rows = []
    for name in spec.models:
        profile, timm_name = backbones.resolve(name)
        cfg = sweep.SweepConfig(profile.name if profile else timm_name, timm_name, profile, spec.methods, spec.Ps,
                                timing, flops="macs" in spec.metrics,
                                speed="speedup" in spec.metrics)
        rows += sweep.run(cfg, [], lambda _: None, on_point, lambda text: None)
    return rows, speed.fingerprint(timing)


def verdicts(spec: CheckSpec, rows: list[dict], env: dict, baseline: dict) -> dict[str, Any]:
    """The whole check as data: one verdict per metric, and how the environments differ."""
    return {"rows": compare(spec, rows, baseline["rows"]), "env": env,
            "environment_differs": environment_gaps(env, baseline.get("env", {}))}


def compare(spec: CheckSpec, rows: list[dict], baseline: list[dict]) -> list[dict[str, Any]]:
    """One verdict per (model, method, P, metric)."""
    index = {(r["model"], r["method"], r["P"]): r for r in baseline}
    verdicts = []
    for row in rows:
        if row["method"] == "stock":
            continue
        key = (row["model"], row["method"], row["P"])
        if key not in index:
            raise GtpcliError(f"the baseline has no row for {key[0]} {key[1]} P={key[2]} "
                              "(re-create it with --update-baseline)")
        for metric in spec.metrics:
            verdicts.append(judge(key, metric, index[key].get(metric), row.get(metric), spec.tolerances[metric]))
    return verdicts


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


def environment_gaps(now: dict, baseline_env: dict) -> list[str]:
    return [f"{k}: baseline {baseline_env.get(k)!r}, now {now.get(k)!r}" for k in ENV_KEYS
            if k in baseline_env and baseline_env.get(k) != now.get(k)]


def load_baseline(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise GtpcliError(f"baseline not found: {path} (create it with --update-baseline {path})")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise GtpcliError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise GtpcliError(f"{path}: a baseline is the JSON of `gtpcli profile --output` ({{'rows': [...], 'env': ...}})")
    return data


def write_junit(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(junit_xml(result))


def junit_xml(result: dict[str, Any]) -> str:
    cases = []
    for v in result["rows"]:
        name = quoteattr(f"{v['model']} {v['method']} P={v['P']} {v['metric']}")
        message = quoteattr(f"baseline {v['baseline']!r}, now {v['now']!r}, tolerance {v['tolerance']}")
        body = "" if v["verdict"] == "pass" else f"<failure message={message}/>"
        cases.append(f'  <testcase classname="gtpcli.check" name={name}>{body}</testcase>')
    failures = sum(v["verdict"] != "pass" for v in result["rows"])
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="gtpcli check" tests="{len(cases)}" '
            f'failures="{failures}">\n' + "\n".join(cases) + "\n</testsuite>\n")
