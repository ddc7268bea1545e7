"""The light commands (complexity, profiles) through Typer's CliRunner: tables, formats, bad input."""

import csv
import io
import json
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from gtpcli.cost import analytic as A
from gtpcli.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args))


def test_complexity_table_as_in_the_readme():
    result = invoke("complexity", "--N", "785", "--C", "768")
    assert result.exit_code == 0, result.output
    assert "785" in result.output and "ToMe" in result.output
    assert f"{A.gtp_macs(785, 768, 12, 12, 8) / 1e6:,.3f}" in result.output


def test_complexity_json_rows_cover_every_combination():
    result = invoke("complexity", "--N", "197,785", "--C", "384..768:384", "--P", "0..14:7", "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    assert len(rows) == 2 * 2 * 3
    for row in rows:
        N, C, L, H, P = (row[k] for k in ("N", "C", "L", "H", "P"))
        assert H == C // 64 and L == 12
        assert row["gtp_macs"] == A.gtp_macs(N, C, L, H, P)
        assert row["tome_macs"] == A.tome_macs(N, C, L, P)
        assert row["tome_closed_form_diff"] == A.as_number(A.tome_macs_closed_form(N, C, L, P) - A.tome_macs(N, C, L, P))
        assert (row["tome_closed_form_diff"] != 0) == (P != 0)
        assert row["ratio"] == pytest.approx(row["tome_macs"] / row["gtp_macs"])


def test_complexity_csv_and_yaml_parse(tmp_path):
    out = invoke("complexity", "--N", "197", "--C", "384", "--P", "4,8", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out.output)))
    assert [int(r["P"]) for r in rows] == [4, 8]
    out = invoke("complexity", "--N", "197", "--C", "384", "--format", "yaml")
    assert yaml.safe_load(out.output)["rows"][0]["P"] == 8
    target = tmp_path / "c.json"
    out = invoke("complexity", "--N", "197", "--C", "384", "--output", str(target))
    assert out.exit_code == 0 and json.loads(target.read_text())["rows"][0]["N"] == 197


def test_complexity_from_a_model_fills_the_architecture_and_backbone_macs():
    result = invoke("complexity", "--model", "deit_s", "--P", "0,8", "--format", "json")
    rows = json.loads(result.output)["rows"]
    assert [(r["N"], r["C"], r["L"], r["H"]) for r in rows] == [(197, 384, 12, 6)] * 2
    arch = A.Arch(N=197, C=384, L=12, H=6)
    assert rows[1]["backbone_macs"] == sum(A.backbone_macs(arch, 8).values())
    by_timm_name = invoke("complexity", "--model", "deit_small_patch16_224", "--format", "json")
    assert json.loads(by_timm_name.output)["rows"][0]["C"] == 384


def test_complexity_takes_any_timm_vit_name_as_the_help_says():
    """Not only the timm names of the profiles: the architecture is read off the model, built without weights."""
    result = invoke("complexity", "--model", "vit_small_patch16_384", "--P", "0", "--format", "json")
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)["rows"][0]
    assert (row["N"], row["C"], row["L"], row["H"]) == (24 * 24 + 1, 384, 12, 6)
    assert row["backbone_macs"] == sum(A.backbone_macs(A.Arch(N=577, C=384, L=12, H=6), 0).values())


def test_per_layer_terms_add_up_to_the_row():
    result = invoke("complexity", "--N", "197", "--C", "384", "--H", "6", "--P", "8", "--per-layer", "--format", "json")
    row = json.loads(result.output)["rows"][0]
    layers = row["layers"]
    assert [l["N_l"] for l in layers[1:]] == [197 - 8 * l for l in range(12)]
    gtp = layers[0]["gtp_graph"] + sum(l["gtp_select"] + l["gtp_propagate"] for l in layers[1:])
    tome = sum(l["tome_match"] + l["tome_merge"] for l in layers[1:])
    assert gtp == row["gtp_macs"] and tome == row["tome_macs"]


@pytest.mark.parametrize("args, message", [
    (["--N", "197", "--C", "384", "--P", "20"], "layer 10"),
    (["--N", "0", "--C", "384"], "N must be positive"),
    (["--N", "197", "--C", "-64"], "C must be positive"),
    (["--N", "197", "--C", "384", "--H", "5"], "does not divide"),
    (["--N", "1..x", "--C", "384"], "cannot read"),
    (["--N", "10..2", "--C", "384"], "backwards"),
    (["--model", "deit_smal"], "did you mean deit_s"),
    (["--N", "197"], "--C"),
    (["--N", "197", "--C", "384", "--format", "xml"], "unknown format"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = invoke("complexity", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_profiles_list_and_user_profile_validation(tmp_path):
    listed = json.loads(invoke("profiles", "--format", "json").output)["rows"]
    assert {"deit_s", "deit_b"} <= {r["name"] for r in listed}
    own = tmp_path / "mine.yaml"
    own.write_text("name: mine\nmodel: {timm: deit_tiny_patch16_224, img_size: 224, patch_size: 16, "
                   "prefix_tokens: 1, embed_dim: 192, depth: 12, num_heads: 3}\n")
    rows = json.loads(invoke("complexity", "--model", str(own), "--format", "json").output)["rows"]
    assert rows[0]["C"] == 192 and rows[0]["H"] == 3
    own.write_text("name: mine\nmodel: {timm: x, img_size: big}\n")
    bad = invoke("complexity", "--model", str(own))
    assert bad.exit_code == 2 and "model.img_size" in bad.output and "int" in bad.output
    own.write_text("name: mine\nmodle: {}\n")
    bad = invoke("complexity", "--model", str(own))
    assert bad.exit_code == 2 and "modle" in bad.output
    own.write_text("name: [unclosed\n")
    bad = invoke("complexity", "--model", str(own))
    assert bad.exit_code == 2 and "not valid YAML" in bad.output
    missing = invoke("complexity", "--model", str(tmp_path / "nope.yaml"))
    assert missing.exit_code == 2 and "not found" in missing.output


def test_light_commands_do_not_import_torch():
    code = ("import sys; from typer.testing import CliRunner; from gtpcli.cli import app; "
            "r = CliRunner().invoke(app, ['complexity', '--N', '785', '--C', '768']); "
            "assert r.exit_code == 0, r.output; assert 'torch' not in sys.modules and 'timm' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
