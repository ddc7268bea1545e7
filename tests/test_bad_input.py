"""Every bad input is one line and exit code 2 (never a traceback, never exit 1, which `check` keeps for a
regression), and nothing is written half. One table: (case, command line, message fragment); a new bad
input found is a new row.

The command lines use placeholders filled from `workspace`: {tmp} is the test's folder, {tiny} a profile
of a small ViT (32x32 images, 2 blocks), {spec} a check spec on it, {ro} a directory nobody can write in
(even root: /sys)."""

from __future__ import annotations

import json
import os
import shlex
import time

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from gtpcli.cli import app

runner = CliRunner()

TINY = ("name: tiny\nmodel: {timm: vit_tiny_patch16_224, img_size: 32, patch_size: 8, prefix_tokens: 1, "
        "embed_dim: 32, depth: 2, num_heads: 2, num_classes: 2}\nmethod: gtp\nP: \"0,2\"\n")
BOMB = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['x'] * 9)}]\n"
               for p, c in zip([None, *"abcdefgh"], "abcdefghi")) + "name: *i\nmodel: {}\n"
RO = "/sys"  # read-only for root too (chmod is no test when the suite runs as root)


def spec_text(**extra) -> str:
    lines = ["check:", "  models: [{tiny}]", "  methods: [gtp]", "  P: 2", "  metrics: [macs, tokens]"]
    lines += [f"  {key}: {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def baseline(rows, env=None) -> str:
    return json.dumps({"rows": rows, **({"env": env} if env is not None else {})})


GOOD_ROW = {"model": "tiny", "method": "gtp", "P": 2, "macs": 1, "tokens": [17, 15]}

# name -> text of a file the cases refer to as {tmp}/name
FILES = {
    "tiny.yaml": TINY,
    "spec.yaml": spec_text(),
    "bomb.yaml": BOMB,
    "heads.yaml": TINY.replace("embed_dim: 32", "embed_dim: 30").replace("num_heads: 2", "num_heads: 4"),
    "reference.yaml": TINY + "reference: {source: paper, P: [0, 2, 4], gmacs: [1.0, 0.9]}\n",
    "p_list.yaml": TINY.replace('P: "0,2"', "P: [0, x]"),
    "p_range.yaml": TINY.replace('P: "0,2"', 'P: "0..x"'),
    "bad_method.yaml": TINY.replace("method: gtp", "method: dyvit"),
    "spec_models.yaml": "check:\n  models: [123]\n",
    "spec_batch.yaml": spec_text(speed="{batch_size: 0}"),
    "spec_runs.yaml": spec_text(speed='{runs: "many"}'),
    "spec_methods.yaml": spec_text().replace("[gtp]", "[gtp, dyvit]"),
    "spec_bomb.yaml": BOMB.replace("name: *i\nmodel: {}\n", "check: {models: *i}\n"),
    "b_empty_row.json": baseline([{}]),
    "b_int_rows.json": baseline([1, 2]),
    "b_lots.json": baseline([{**GOOD_ROW, "macs": "lots"}]),
    "b_env.json": baseline([GOOD_ROW], env=5),
    "b_tokens.json": baseline([{**GOOD_ROW, "tokens": "many"}]),
    "b_not_json.json": "{",
    "b_list.json": "[1, 2]",
    "r_list.json": "[1, 2]",
    "r_rows.json": json.dumps({"rows": 5}),
    "r_row.json": json.dumps({"rows": [{"method": "gtp"}]}),
    "r_env.json": json.dumps({"rows": [], "env": 5}),
    "r_text.json": "not json {",
    "r_other.json": None,  # written by the workspace: a result of another setting
    "a_file": "I am a file\n",
}

CASES = [
    # --- options refused, never replaced by a default -------------------------------------------
    ("profile negative img-size", "profile {tiny} --img-size -8 --no-speed --output {tmp}/o.json", "--img-size must be >= 1"),
    ("profile zero img-size", "profile {tiny} --img-size 0 --no-speed --output {tmp}/o.json", "--img-size must be >= 1"),
    ("trace negative img-size", "trace {tiny} --img-size -8 --out {tmp}/t", "--img-size must be >= 1"),
    ("trace zero img-size", "trace {tiny} --img-size 0 --out {tmp}/t", "--img-size must be >= 1"),
    ("profile device tpu", "profile {tiny} --device tpu --no-speed --output {tmp}/o.json", "--device must be auto, cpu, cuda"),
    ("trace device tpu", "trace {tiny} --device tpu --out {tmp}/t", "--device must be"),
    ("check device tpu", "check {spec} --device tpu --update-baseline {tmp}/b.json", "--device must be"),
    ("complexity L 0", "complexity --N 197 --C 384 --L 0", "--L must be >= 1"),
    ("complexity H 0", "complexity --N 197 --C 384 --H 0", "--H must be >= 1"),
    ("trace batch-size 0", "trace {tiny} --batch-size 0 --out {tmp}/t", "--batch-size must be >= 1"),
    ("trace steps 0", "trace {tiny} --steps 0 --out {tmp}/t", "--steps must be >= 1"),
    ("trace negative P", "trace {tiny} --P -1 --out {tmp}/t", "--P must be >= 0"),
    ("profile batch-size 0", "profile {tiny} --batch-size 0 --output {tmp}/o.json", "--batch-size must be >= 1"),
    ("profile runs 0", "profile {tiny} --runs 0 --output {tmp}/o.json", "--runs must be >= 1"),
    ("profile warmup -1", "profile {tiny} --warmup -1 --output {tmp}/o.json", "--warmup must be >= 0"),
    ("profile empty method", "profile {tiny} --method '' --no-speed --output {tmp}/o.json", "empty method name"),
    ("profile half-empty method", "profile {tiny} --method gtp, --no-speed --output {tmp}/o.json", "empty method name"),
    ("trace empty method", "trace {tiny} --method '' --out {tmp}/t", "empty method name"),
    ("trace two methods", "trace {tiny} --method gtp,tome --out {tmp}/t", "takes one method"),
    ("profile negative alpha", "profile {tiny} --alpha -1 --no-speed --output {tmp}/o.json", "--alpha"),
    ("profile sparsity 0", "profile {tiny} --sparsity 0 --no-speed --output {tmp}/o.json", "--sparsity"),
    ("profile M 0", "profile {tiny} --M 0 --no-speed --output {tmp}/o.json", "--M must be >= 1"),
    ("profile limit 0", "profile {tiny} --limit 0 --no-speed --output {tmp}/o.json", "--limit must be >= 1"),
    ("profile dtype", "profile {tiny} --dtype float64 --output {tmp}/o.json", "--dtype must be"),
    ("complexity huge range", "complexity --N 197..100000000 --C 384", "99,999,804 values"),
    ("complexity huge grid", "complexity --N 197..5196 --C 384,768 --P 0,1 --H 6", "gives 20,000 rows"),
    # --- output places, refused before anything is measured ---------------------------------------
    ("profile output txt", "profile {tiny} --no-speed --output {tmp}/x.txt", "'.txt'"),
    ("profile output csv", "profile {tiny} --no-speed --output {tmp}/x.csv", "must be .json or .yaml"),
    ("profile output read-only", "profile {tiny} --no-speed --output {ro}/x.json", "cannot write in /sys"),
    ("profile output under a file", "profile {tiny} --no-speed --output {tmp}/a_file/x.json", "is a file, not a directory"),
    ("profile output is a directory", "profile {tiny} --no-speed --output {tmp}", "is a directory"),
    ("complexity output txt", "complexity --N 197 --C 384 --output {tmp}/x.txt", "'.txt'"),
    ("complexity output read-only", "complexity --N 197 --C 384 --output {ro}/x.json", "cannot write in /sys"),
    ("trace out is a file", "trace {tiny} --out {tmp}/a_file", "exists and is not a directory"),
    ("trace out read-only", "trace {tiny} --out {ro}/trace", "cannot write in /sys"),
    ("check junit read-only", "check {spec} --baseline {tmp}/b_lots.json --junit {ro}/j.xml", "--junit"),
    ("check update-baseline read-only", "check {spec} --update-baseline {ro}/b.json", "cannot write in /sys"),
    ("check update-baseline txt", "check {spec} --update-baseline {tmp}/b.txt", "'.txt'"),
    ("check update-baseline csv", "check {spec} --update-baseline {tmp}/b.csv", "'.csv'"),
    # --- profile files ----------------------------------------------------------------------------
    ("profile not UTF-8", "profile {tmp}/binary.yaml --no-speed --output {tmp}/o.json", "not a UTF-8 text file"),
    ("profile is a directory", "complexity --model {tmp}/folder.yaml", "is a directory"),
    ("profile alias bomb", "profile {tmp}/bomb.yaml --no-speed --output {tmp}/o.json", "alias bomb"),
    ("complexity alias bomb", "complexity --model {tmp}/bomb.yaml", "alias bomb"),
    ("heads do not divide", "profile {tmp}/heads.yaml --no-speed --output {tmp}/o.json", "not divisible by model.num_heads"),
    ("complexity heads do not divide", "complexity --model {tmp}/heads.yaml", "not divisible by model.num_heads"),
    ("reference lengths", "profile {tmp}/reference.yaml --no-speed --output {tmp}/o.json", "has 2 values for 3 P values"),
    ("profile P list blamed on the profile", "profile {tmp}/p_list.yaml --no-speed --output {tmp}/o.json", "p_list.yaml: key 'P'"),
    ("profile P range blamed on the profile", "profile {tmp}/p_range.yaml --no-speed --output {tmp}/o.json", "p_range.yaml: key 'P'"),
    ("profile unknown method", "profile {tmp}/bad_method.yaml --no-speed --output {tmp}/o.json", "bad_method.yaml: key 'method'"),
    # --- data and weights -------------------------------------------------------------------------
    ("flat data without fidelity", "profile {tiny} --no-speed --data {tmp}/flat --output {tmp}/o.json", "--fidelity"),
    ("one corrupt image", "profile {tiny} --no-speed --data {tmp}/classes --output {tmp}/o.json", "broken.png"),
    ("corrupt image with fidelity", "profile {tiny} --no-speed --data {tmp}/flat --fidelity --output {tmp}/o.json", "broken.png"),
    ("no-strict with 1 tensor", "profile {tiny} --no-speed --no-strict --checkpoint {tmp}/one.pth --output {tmp}/o.json",
     "only 1 of the model's"),
    # --- check specs and baselines ----------------------------------------------------------------
    ("spec models of ints", "check {tmp}/spec_models.yaml --update-baseline {tmp}/b.json", "must list model names, got 123"),
    ("spec batch_size 0", "check {tmp}/spec_batch.yaml --update-baseline {tmp}/b.json", "check.speed.batch_size' must be an integer >= 1"),
    ("spec runs many", "check {tmp}/spec_runs.yaml --update-baseline {tmp}/b.json", "check.speed.runs' must be an integer"),
    ("spec unknown method", "check {tmp}/spec_methods.yaml --update-baseline {tmp}/b.json", "unknown method 'dyvit'"),
    ("spec alias bomb", "check {tmp}/spec_bomb.yaml --update-baseline {tmp}/b.json", "alias bomb"),
    ("baseline empty row", "check {spec} --baseline {tmp}/b_empty_row.json", "rows[0] has no 'model'"),
    ("baseline rows of ints", "check {spec} --baseline {tmp}/b_int_rows.json", "rows[0] is a int"),
    ("baseline macs lots", "check {spec} --baseline {tmp}/b_lots.json", "has macs 'lots'"),
    ("baseline env 5", "check {spec} --baseline {tmp}/b_env.json", "'env' must be a mapping"),
    ("baseline tokens", "check {spec} --baseline {tmp}/b_tokens.json", "has tokens 'many'"),
    ("baseline not JSON", "check {spec} --baseline {tmp}/b_not_json.json", "not valid JSON"),
    ("baseline a list", "check {spec} --baseline {tmp}/b_list.json", "a baseline is what --update-baseline"),
    ("baseline txt", "check {spec} --baseline {tmp}/a_file", "cannot tell the format"),
    # --- result files to resume or merge into -----------------------------------------------------
    ("resume a list", "profile {tiny} --no-speed --resume --output {tmp}/r_list.json", "not a gtpcli profile result"),
    ("resume rows 5", "profile {tiny} --no-speed --resume --output {tmp}/r_rows.json", "no 'rows' list"),
    ("resume row without P", "profile {tiny} --no-speed --resume --output {tmp}/r_row.json", "rows[0].model"),
    ("resume env 5", "profile {tiny} --no-speed --resume --output {tmp}/r_env.json", "'env' is not a mapping"),
    ("resume not JSON", "profile {tiny} --no-speed --resume --output {tmp}/r_text.json", "not valid JSON"),
    ("output of another setting", "profile {tiny} --no-speed --output {tmp}/r_other.json", "measured with weights"),
    # --- values the run would not use ----------------------------------------------------------------
    ("profile P for tpc", "profile {tiny} --method tpc --P 2 --no-speed", "tpc has no P"),
    ("trace P for ats", "trace {tiny} --method ats --P 2 --out {tmp}/t", "set --hp ats.layers=... instead"),
    ("profile evit keep_rate with P", "profile {tiny} --method evit --hp evit.keep_rate=0.5 --no-speed",
     "--hp evit.keep_rate sets EViT's own schedule, which a P replaces"),
    ("trace evo stages with P", "trace {tiny} --method evo --hp evo.stages=1 --P 2 --out {tmp}/t",
     "leave out --P to trace that schedule"),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    for name, text in FILES.items():
        if text is not None:
            (folder / name).write_text(text.replace("{tiny}", str(folder / "tiny.yaml")))
    (folder / "binary.yaml").write_bytes(b"name: \xff\xfe\x00tiny\n")
    (folder / "folder.yaml").mkdir()
    (folder / "r_other.json").write_text(json.dumps({"model": "tiny", "timm": "vit_tiny_patch16_224",
                                                     "weights": "other.pth", "rows": [], "env": {}}))
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    for where in ("flat", "classes/a", "classes/b"):
        (folder / where).mkdir(parents=True)
        image.save(folder / where / "good.png")
    (folder / "flat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "classes" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    torch.save({"cls_token": torch.zeros(1, 1, 32)}, folder / "one.pth")
    return folder


def snapshot(folder) -> dict:
    return {str(p): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("name, command, fragment", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(workspace, name, command, fragment):
    argv = [arg.format(tmp=workspace, tiny=workspace / "tiny.yaml", spec=workspace / "spec.yaml", ro=RO)
            for arg in shlex.split(command)]
    before = snapshot(workspace)
    started = time.monotonic()
    result = runner.invoke(app, argv)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    assert fragment in result.output, result.output
    message = [line for line in result.output.splitlines() if line.strip()]
    assert len(message) == 1 and message[0].startswith("error:"), result.output
    assert snapshot(workspace) == before  # nothing written, not even half
    assert time.monotonic() - started < 60  # refused at once (the alias bomb took 85 s and 5.5 GB)


def test_the_table_covers_every_case_of_the_issue():
    """Section 5 of issue 19, one fragment per reported input: the table may grow, never shrink."""
    names = {case[0] for case in CASES}
    for required in ("profile negative img-size", "profile device tpu", "trace out is a file", "trace out read-only",
                     "profile not UTF-8", "profile output read-only", "check junit read-only",
                     "check update-baseline read-only", "heads do not divide", "reference lengths",
                     "profile alias bomb", "one corrupt image", "baseline empty row", "baseline rows of ints",
                     "baseline macs lots", "baseline env 5", "spec models of ints", "spec batch_size 0",
                     "spec runs many", "resume a list", "complexity L 0", "trace batch-size 0", "profile zero img-size",
                     "profile empty method", "profile negative alpha", "profile P list blamed on the profile",
                     "complexity huge range", "check update-baseline txt", "flat data without fidelity",
                     "no-strict with 1 tensor"):
        assert required in names
    assert len(names) == len(CASES)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_unreadable_profile(workspace, tmp_path):
    path = tmp_path / "secret.yaml"
    path.write_text(TINY)
    path.chmod(0)
    result = runner.invoke(app, ["complexity", "--model", str(path)])
    assert result.exit_code == 2 and "cannot read profile" in result.output
