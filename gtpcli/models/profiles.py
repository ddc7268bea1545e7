"""Profiles: YAML files that name a backbone, its architecture, default hyperparameters and paper rows.

Built-in profiles live in `gtpcli/profiles/` (the package `gtpcli.profiles`); a user may pass the
path of their own YAML file anywhere a profile name is accepted.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..config.ranges import parse_values
from ..cost.analytic import Arch
from ..errors import GtpcliError
from ..files import load_yaml, read_text

_NUMBER = (int, float)
# key: (accepted types, required)
_TOP = {"name": (str, True), "description": (str, False), "model": (dict, True), "method": (str, False),
        "P": ((str, int, list), False), "hparams": (dict, False), "per_P": (dict, False),
        "reference": ((dict, list), False), "check": (dict, False)}
_MODEL = {"timm": (str, True), "img_size": (int, True), "patch_size": (int, True),
          "prefix_tokens": (int, True), "embed_dim": (int, True), "depth": (int, True),
          "num_heads": (int, True), "mlp_ratio": (_NUMBER, False), "num_classes": (int, False),
          "in_chans": (int, False), "stem": (str, False), "pooled_norm": (bool, False),
          "aux_head": (bool, False), "kwargs": (dict, False)}
_REFERENCE = {"source": (str, True), "method": (str, False), "P": (list, True), "acc": (list, False),
              "gmacs": (list, False), "img_s": (list, False)}


@dataclass(frozen=True)
class Profile:
    """A validated profile."""

    name: str
    path: Path
    model: dict[str, Any]
    description: str = ""
    method: str = "gtp"
    P: str | int | list = "0..8"
    hparams: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_P: dict[int, dict[str, Any]] = field(default_factory=dict)
    reference: list[dict[str, Any]] = field(default_factory=list)
    check: dict[str, Any] | None = None

    @property
    def arch(self) -> Arch:
        m = self.model
        tokens = (m["img_size"] // m["patch_size"]) ** 2 + m["prefix_tokens"]
        return Arch(N=tokens, C=m["embed_dim"], L=m["depth"], H=m["num_heads"], prefix=m["prefix_tokens"],
                    mlp_ratio=float(m.get("mlp_ratio", 4.0)), patch_size=m["patch_size"],
                    in_chans=m.get("in_chans", 3), num_classes=m.get("num_classes", 1000),
                    stem=m.get("stem", "patch"), pooled_norm=m.get("pooled_norm", False),
                    aux_head=m.get("aux_head", False))

    def hparams_for(self, method: str, P: int) -> dict[str, Any]:
        """The method's default hyperparameters, with the per-P best values where the profile has them."""
        from ..methods import CENTRE

        chosen = dict(self.hparams.get(method, {}))
        if method == CENTRE:  # per_P holds the best settings of the method the tool is built around
            chosen.update(self.per_P.get(P, {}))
        return chosen


def builtin_dir() -> Path:
    """Where the shipped profiles are: the installed package, or `gtpcli/profiles/` of a checkout."""
    try:
        return Path(resources.files("gtpcli.profiles"))  # its __init__.py makes this a real path
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "profiles"


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


def load_profile(name_or_path: str) -> Profile:
    """A built-in profile by name, or the user's YAML file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise GtpcliError(f"profile file not found: {path}")
        return _parse(path)
    builtin = builtin_dir() / f"{name_or_path}.yaml"
    if not builtin.is_file():
        raise GtpcliError(f"unknown profile {name_or_path!r}{suggest(name_or_path, builtin_names())}")
    return _parse(builtin)


def find_profile(name: str) -> Profile | None:
    """The profile with this name or timm model name, if any."""
    if name in builtin_names() or Path(name).suffix in (".yaml", ".yml"):
        return load_profile(name)
    for other in builtin_names():
        profile = load_profile(other)
        if profile.model["timm"] == name:
            return profile
    return None


def suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else f" (known: {', '.join(choices)})"


def _parse(path: Path) -> Profile:
    data = load_yaml(read_text(path, "profile"), str(path))
    if not isinstance(data, dict):
        raise GtpcliError(f"{path}: a profile must be a mapping with keys {', '.join(_TOP)}")
    _check(data, _TOP, path, "")
    _check(data["model"], _MODEL, path, "model.")
    references = data.get("reference") or []
    references = [references] if isinstance(references, dict) else references
    for at, reference in enumerate(references):
        if not isinstance(reference, dict):
            raise GtpcliError(f"{path}: key 'reference[{at}]' must be a mapping")
        _check(reference, _REFERENCE, path, "reference.")
        _check_reference(reference, path, at)
    for method, values in data.get("hparams", {}).items():
        if not isinstance(values, dict):
            raise GtpcliError(f"{path}: key 'hparams.{method}' must be a mapping of hyperparameters")
        from ..methods import REGISTRY  # each method checks its own hyperparameters
        if method not in REGISTRY:
            raise GtpcliError(f"{path}: key 'hparams.{method}': unknown method{suggest(str(method), list(REGISTRY))}")
        REGISTRY[method].validate(values, f"{path}: key 'hparams.{method}':")
    per_P = {}
    for P, values in data.get("per_P", {}).items():
        if not isinstance(P, int) or not isinstance(values, dict):
            raise GtpcliError(f"{path}: key 'per_P' must map integer P to a mapping, got {P!r}: {values!r}")
        per_P[P] = values
    if data["model"].get("stem", "patch") not in ("patch", "conv4"):
        raise GtpcliError(f"{path}: key 'model.stem' must be patch or conv4")
    if "P" in data:
        parse_values(data["P"], f"{path}: key 'P'")
    if "method" in data:
        from ..config.options import methods
        methods(data["method"], f"{path}: key 'method'")
    fields = {k: v for k, v in data.items() if k not in ("per_P", "reference")}
    profile = Profile(path=path, per_P=per_P, reference=references, **fields)
    _check_arch(profile, path)
    return profile


def _check_arch(profile: Profile, path: Path) -> None:
    """The numbers must describe a buildable ViT: positive sizes, heads that divide the width."""
    m = profile.model
    for key in ("img_size", "patch_size", "embed_dim", "depth", "num_heads"):
        if m[key] < 1:
            raise GtpcliError(f"{path}: key 'model.{key}' must be >= 1, got {m[key]}")
    for key in ("prefix_tokens", "num_classes"):
        if m.get(key, 0) < 0:
            raise GtpcliError(f"{path}: key 'model.{key}' must be >= 0, got {m[key]}")
    if m.get("mlp_ratio", 4.0) <= 0:
        raise GtpcliError(f"{path}: key 'model.mlp_ratio' must be > 0, got {m['mlp_ratio']}")
    if m["embed_dim"] % m["num_heads"]:
        raise GtpcliError(f"{path}: model.embed_dim {m['embed_dim']} is not divisible by model.num_heads "
                          f"{m['num_heads']}")
    if m["img_size"] < m["patch_size"]:
        raise GtpcliError(f"{path}: model.img_size {m['img_size']} is smaller than model.patch_size {m['patch_size']}")


def _check_reference(reference: dict, path: Path, at: int) -> None:
    """Every published column has one value per P, so a row can never fail after the sweep."""
    where = f"{path}: key 'reference[{at}]"
    if not all(isinstance(P, int) and not isinstance(P, bool) for P in reference["P"]):
        raise GtpcliError(f"{where}.P' must be a list of integers, got {reference['P']!r}")
    for key in ("acc", "gmacs", "img_s"):
        values = reference.get(key)
        if values is None:
            continue
        if len(values) != len(reference["P"]):
            raise GtpcliError(f"{where}.{key}' has {len(values)} values for {len(reference['P'])} P values")
        if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
            raise GtpcliError(f"{where}.{key}' must be a list of numbers")


def _check(data: dict, schema: dict, path: Path, prefix: str) -> None:
    for key in data:
        if key not in schema:
            raise GtpcliError(f"{path}: unknown key '{prefix}{key}'{suggest(str(key), list(schema))}")
    for key, (types, required) in schema.items():
        if key not in data:
            if required:
                raise GtpcliError(f"{path}: missing key '{prefix}{key}'")
            continue
        value = data[key]
        types = types if isinstance(types, tuple) else (types,)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = " or ".join(t.__name__ for t in types)
            raise GtpcliError(f"{path}: key '{prefix}{key}' must be {expected}, got {type(value).__name__} {value!r}")
