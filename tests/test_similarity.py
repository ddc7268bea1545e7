"""Over-smoothing (GTP Fig. 6): the average cosine similarity between image tokens after each block."""

from __future__ import annotations

import json
import math

import torch
from typer.testing import CliRunner

from gtpcli.cli import app
from gtpcli.measure.similarity import mean_cosine, per_block
from test_bad_input import TINY

runner = CliRunner()


def test_mean_cosine_by_hand():
    # a=(1,0), b=(0,1), c=(1,1)/sqrt2: cos(a,b)=0, cos(a,c)=cos(b,c)=1/sqrt2 -> mean of 3 pairs = sqrt2/3
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]],
                           [[2.0, 0.0], [5.0, 0.0], [-1.0, 0.0]]])  # second image: 1, -1, -1 -> -1/3
    assert torch.allclose(mean_cosine(tokens), torch.tensor([math.sqrt(2) / 3, -1 / 3]), atol=1e-6)
    assert math.isnan(mean_cosine(torch.ones(1, 1, 4))[0])  # one token has no pair


def test_per_block_is_the_block_outputs_without_the_prefix(small_vit):
    images = torch.randn(3, 3, *small_vit.patch_embed.img_size)
    found = per_block(small_vit, [images[:2], images[2:]], prefix=1)
    with torch.inference_mode():
        x = small_vit.norm_pre(small_vit.patch_drop(small_vit._pos_embed(small_vit.patch_embed(images))))
        expected = []
        for block in small_vit.blocks:
            x = block(x)
            u = torch.nn.functional.normalize(x[:, 1:], dim=-1)
            n = u.shape[1]
            pairs = u @ u.transpose(1, 2)
            expected.append(float(((pairs.sum((1, 2)) - n) / (n * (n - 1))).mean()))
    assert found == [round(v, 6) for v in expected]


def test_trace_token_similarity_stock_equals_p0_and_reduction_changes_it(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)

    def run(*args):
        torch.manual_seed(0)  # the same random weights in both runs
        result = runner.invoke(app, ["trace", str(tmp_path / "tiny.yaml"), "--token-similarity", "--device", "cpu",
                                     "--batch-size", "4", "-f", "json", *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    p0, p4 = run("--P", "0"), run("--P", "4")
    assert [r["stock"] for r in p0["rows"]] == [r["gtp"] for r in p0["rows"]]
    assert [r["stock"] for r in p4["rows"]] == [r["stock"] for r in p0["rows"]]  # same seeded images
    assert p4["rows"][-1]["gtp"] != p4["rows"][-1]["stock"] and p4["images"] == 4
    assert "random images" in p4["images_source"]
    bad = runner.invoke(app, ["trace", str(tmp_path / "tiny.yaml"), "--limit", "3"])
    assert bad.exit_code == 2 and "--token-similarity" in bad.output
