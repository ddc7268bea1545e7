"""The method registry: one module per method, read by every command; nothing may drift from the code."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from gtpcli import methods
from gtpcli.errors import GtpcliError


@pytest.mark.parametrize("name", list(methods.REGISTRY))
def test_each_card_matches_its_reduction(name):
    """Every hyperparameter a card declares is a keyword of its Reduction, with the same default."""
    card = methods.get(name)
    cls = card.load()
    assert cls.method == name
    signature = inspect.signature(cls.__init__).parameters
    for hp in card.hparams:
        assert hp.name in signature, (name, hp.name)
        assert signature[hp.name].default == hp.default, (name, hp.name)
    declared = {hp.name for hp in card.hparams} | {"self", "model", "P"}
    assert set(signature) <= declared, set(signature) - declared
    assert all(stage.startswith(name + ".") for stage in card.stages)
    assert all(column.key.startswith(name + "_") for column in card.columns)


def test_gtp_choices_are_the_implementations():
    from gtpcli.methods.gtp import patch as gtp

    card = {hp.name: hp for hp in methods.get("gtp").hparams}
    assert card["selection"].choices == gtp.SELECTIONS and card["graph"].choices == gtp.GRAPHS
    assert card["head_fusion"].choices == gtp.FUSIONS and card["variant"].choices == gtp.VARIANTS


def test_the_registry_names_every_method_once_and_imports_no_torch():
    """Every method folder (one with a card) is in the registry under its folder's name, none twice."""
    code = ("import sys, pathlib, gtpcli.methods as m; "
            "folders = sorted(p.parent.name for p in pathlib.Path(m.__file__).parent.glob('*/card.py')); "
            "assert sorted(m.REGISTRY) == sorted(m._MODULES) == folders, (list(m.REGISTRY), folders); "
            "assert {'gtp', 'tome', 'tcvit', 'evit', 'evo', 'ats', 'tpc'} <= set(m.REGISTRY); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_validation_is_one_line_and_suggests():
    card = methods.get("tcvit")
    with pytest.raises(GtpcliError, match="did you mean alpha"):
        card.validate({"alpah": 1})
    assert card.validate({"K": 3.0}) == {"K": 3} and isinstance(card.validate({"alpha": 500})["alpha"], float)
    with pytest.raises(GtpcliError, match="unknown method 'dyvit'"):
        methods.get("dyvit")


def test_patch_reads_the_registry(monkeypatch):
    """A method added to the table is patchable, listed and traced without touching any other module."""
    from dataclasses import replace

    import torch
    from timm.models.vision_transformer import VisionTransformer

    import gtpcli
    from gtpcli.methods.patching import METHODS

    card = replace(methods.get("tome"), name="tome2", stages=("tome2.match",))
    monkeypatch.setitem(methods.REGISTRY, "tome2", card)
    assert "tome2" in METHODS and methods.stages()[-1] == "tome2.match"
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3).eval()
    gtpcli.patch(model, "tome2", r=2)
    assert model.reduction.removals == [2, 2]
    assert methods.implemented_overhead(backbones_arch(model), "tome2", [2, 2]) > 0
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def backbones_arch(model):
    from gtpcli.models import backbones

    return backbones.arch_of(model)


def test_a_text_hyperparameter_keeps_its_text_where_yaml_would_read_a_number():
    from gtpcli.config import options

    assert options.hparams(["evo.stages=4", "ats.layers=5", "evit.drop_loc=3, 6"], ["evo", "ats", "evit"]) == {
        "evo": {"stages": "4"}, "ats": {"layers": "5"}, "evit": {"drop_loc": "3, 6"}}
    assert options.hparams(["evo.keep_ratio=0.7"], ["evo"]) == {"evo": {"keep_ratio": 0.7}}  # numbers stay numbers


def test_take_rows_picks_each_images_rows_by_hand():
    """The shared row gather (index_select over the flattened batch) against rows picked one by one, for a
    float and an integer tensor (GTP gathers neighbour lists with it)."""
    import torch

    from gtpcli.methods.blocks import take_rows

    x = torch.arange(2 * 5 * 3).view(2, 5, 3)
    rows = torch.tensor([[4, 0, 2], [1, 1, 3]])
    expected = torch.stack([torch.stack([x[b, r] for r in rows[b].tolist()]) for b in range(2)])
    assert torch.equal(take_rows(x, rows), expected)
    assert torch.equal(take_rows(x.float(), rows), expected.float())
    assert take_rows(x, rows[:, :0]).shape == (2, 0, 3)
