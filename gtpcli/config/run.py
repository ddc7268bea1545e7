"""One run configuration for `profile`, `trace` and `check`: built by keyword, from flags or from YAML.

Every option of a measurement is a field of `RunConfig` with its default. The command line, a YAML file
(`--config run.yaml`) and a result file (`--config result.json`, which holds the configuration of the run
that wrote it) all produce the same object, so any run can be written down and replayed. Precedence:
the defaults here, then the file, then the flags given on the command line.

To add an option: add a field below (with a default and a comment), give the Typer command an option of
the same name, and read `cfg.<name>` where it is used. The CLI passes on exactly the flags the user typed
(`given`), so the field's default lives here only.
"""

from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import GtpcliError

GTP_HPARAMS = ("alpha", "sparsity", "M", "selection", "graph", "head_fusion", "variant")
# Per-invocation choices: how this run reads and writes files, not what it measures. Not recorded, so a
# replay writes (by default) where the replaying user says, not over the file it was read from.
SEARCH_GUARD = 100_000  # image evaluations above which `profile --search` runs only with --yes
INVOCATION = ("resume", "fmt", "output", "config", "write_profile", "yes")


@dataclass(frozen=True)
class RunConfig:
    """What one run measures and how. None means "the profile's value, or the command's default"."""

    model: str = "deit_s"                  # profile name, profile YAML path or timm model name
    P: Optional[str] = None                # tokens removed per layer: "8", "4,8,12", "0..14" (the profile's, or 0..8)
    method: Optional[str] = None           # one or a comma list of registered methods
    # GTP's own hyperparameters (None: the profile's value, or the method's default); a list or range
    # ("0..0.4:0.1", "mixed,spatial") is a grid, for --search
    alpha: Optional[Union[float, str]] = None
    sparsity: Optional[Union[float, str]] = None
    M: Optional[Union[int, str]] = None
    selection: Optional[str] = None
    graph: Optional[str] = None
    head_fusion: Optional[str] = None
    variant: Optional[str] = None
    prop_attn: Optional[bool] = None       # proportional attention of GTP and ToMe
    hp: list[str] = field(default_factory=list)  # METHOD.NAME=VALUE, any registered method
    delta: Optional[str] = None            # TPC's halting thresholds, the adaptive sweep axis: "0.01", "0.001..0.2"
    bins: Optional[str] = None             # "paper": every method at its setting for each GMACs bin of GTP's Tables 2/3
    # the model and how it runs
    checkpoint: Optional[Path] = None
    pretrained: bool = False               # timm's published weights (hub), instead of random or a checkpoint
    strict: bool = True
    device: str = "auto"
    dtype: str = "float32"                 # a plain cast of model and input
    amp: Optional[str] = None              # autocast: bf16 or fp16 (the model stays float32)
    compile: bool = False                  # torch.compile every model measured, stock and reduced alike
    compile_mode: str = "default"          # torch.compile's mode
    batch_size: Optional[str] = None       # one or a list ("1,8,32"): a sweep axis; None: 128 on CUDA, 16 on CPU
    img_size: Optional[str] = None         # one or a list ("224,384"): a sweep axis; None: the model's
    seed: int = 0                          # the timed random input batch and the order of each timing round
    runs: Optional[int] = None             # timed batches per configuration, spread over the rounds
    rounds: Optional[int] = None           # interleaved timing rounds (docs/timing.md); 1: the sequential order
    warmup: Optional[int] = None
    speed: bool = True
    flops: bool = True
    # accuracy
    data: Optional[Path] = None
    limit: Optional[int] = None
    fidelity: bool = False
    class_map: Optional[Path] = None       # class name per line in the head's order (timm's .txt), for --data's labels
    shard_points: bool = False             # under torchrun: whole points per process instead of a share of the images
    # best over settings (gtpcli/search.py)
    search: bool = False                   # run the grid of the GTP hyperparameters given as lists, best per P
    holdout: Optional[int] = None          # report each winner on this many further images, disjoint from --limit's
    best_per: Optional[str] = None         # also the best per value of one searched hyperparameter (Tables 4, 5)
    write_profile: Optional[Path] = None   # write the winners as a profile's per_P block
    yes: bool = False                      # run a grid larger than search.GUARD image evaluations
    # trace
    steps: int = 3                         # profiled forward passes
    # per invocation (see INVOCATION)
    resume: bool = False
    fmt: str = "table"
    output: Optional[Path] = None

    @property
    def gtp_hparams(self) -> dict[str, Any]:
        """The GTP hyperparameters given (on the command line or in the file)."""
        return {name: getattr(self, name) for name in GTP_HPARAMS if getattr(self, name) is not None}

    def merged(self, given: dict[str, Any]) -> "RunConfig":
        """This configuration with `given` (the flags typed, or a file's keys) on top, each checked."""
        return replace(self, **{name: _typed(name, value, "") for name, value in given.items()})

    def record(self) -> dict[str, Any]:
        """The configuration as plain data for a result file: what replays the run."""
        data = asdict(self)
        for name in INVOCATION:
            data.pop(name, None)
        return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}


FIELDS = {f.name: f for f in fields(RunConfig)}
_HINTS = typing.get_type_hints(RunConfig)


def load(path: Path) -> dict[str, Any]:
    """The settings a `--config` file holds: a mapping of RunConfig fields (YAML or JSON), or a gtpcli
    result file, whose recorded `config` replays the run that wrote it. Unknown keys and wrong types
    are refused in one line, naming the file."""
    from ..files import load_data

    where = f"--config {path}"
    data = load_data(path, "--config file", ("yaml", "json"))
    if isinstance(data, dict) and "rows" in data:
        if not isinstance(data.get("config"), dict):
            raise GtpcliError(f"{where}: a result file without a recorded 'config' (written by an older gtpcli); "
                              "give the options on the command line")
        data = data["config"]
    if not isinstance(data, dict):
        raise GtpcliError(f"{where}: expected a mapping of options (e.g. model: deit_s, P: 0..8), "
                          f"got a {type(data).__name__}")
    return {str(key): _typed(str(key), value, f"{where}: ") for key, value in data.items()}


def _typed(name: str, value: Any, where: str) -> Any:
    """`value` as the type field `name` declares (a YAML int where a str is expected is fine: `P: 8`)."""
    if name not in FIELDS:
        known = ", ".join(n for n in FIELDS if n not in INVOCATION)
        raise GtpcliError(f"{where}unknown option {name!r} (known: {known})")
    if value is None:
        return None
    kinds = _kinds(_HINTS[name])
    if isinstance(value, bool) != (bool in kinds):
        raise GtpcliError(f"{where}option {name!r} must be {_describe(kinds)}, got {value!r}")
    for kind in kinds:
        if kind is Path and isinstance(value, (str, Path)):
            return Path(value)
        if kind is str and isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
        if kind is str and isinstance(value, list) and value and all(type(v) is int for v in value):
            return ",".join(map(str, value))  # a YAML list for a list option: P: [4, 8]
        if kind is float and isinstance(value, (int, float)):
            return float(value)
        if kind is list and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        if kind in (int, bool) and type(value) is kind:
            return value
    raise GtpcliError(f"{where}option {name!r} must be {_describe(kinds)}, got {value!r}")


def _kinds(hint) -> tuple[type, ...]:
    """The plain types an annotation allows: Optional[int] -> (int,), list[str] -> (list,)."""
    origin = typing.get_origin(hint)
    if origin is Union or origin is getattr(types, "UnionType", None):
        return tuple(k for arg in typing.get_args(hint) if arg is not type(None) for k in _kinds(arg))
    return (origin or hint,)


def _describe(kinds: tuple[type, ...]) -> str:
    names = {str: "text (or integers)", int: "an integer", float: "a number", bool: "true or false", list: "a list of strings",
             Path: "a path"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)
