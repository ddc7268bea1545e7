"""--data through timm's readers (a folder of class folders, a .tar of them) and class maps checked against
the model's head, on the trained digits model."""

import json
import tarfile

import pytest
import torch
from typer.testing import CliRunner

from gtpcli.cli import app
from test_accuracy import trained  # noqa: F401 (the digits folders and checkpoint, cached between runs)

pytestmark = pytest.mark.slow
runner = CliRunner()


def profile(root, model, *args):
    return runner.invoke(app, ["profile", str(model), "--no-speed", "--no-flops", "--P", "0,8", "--format", "json",
                               "--output", str(root / f"out-{abs(hash(args))}.json"), *args])


def accuracies(result):
    assert result.exit_code == 0, result.output
    return [(row["acc"], row["acc_n"]) for row in json.loads(result.stdout)["rows"]]


def test_a_tar_of_class_folders_reads_like_the_folder(trained, tmp_path):  # noqa: F811
    archive = tmp_path / "val.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(trained / "val", arcname="val")
    checkpoint = ["--checkpoint", str(trained / "vit.pth")]
    folder = accuracies(profile(tmp_path, trained / "digits.yaml", *checkpoint, "--data", str(trained / "val")))
    packed = accuracies(profile(tmp_path, trained / "digits.yaml", *checkpoint, "--data", str(archive)))
    assert packed == folder and folder[0][1] == 360 and folder[0][0] > 85


@pytest.fixture(scope="module")
def wider(trained, tmp_path_factory):
    """The digits model with a 20-class head: its 10 trained rows at indices 10..19, and 10 rows that never
    win (bias -1e4) at 0..9. With the class map "x0..x9, then 0..9" its accuracy is exactly the original's."""
    root = tmp_path_factory.mktemp("wider")
    state = torch.load(trained / "vit.pth", weights_only=True)["state_dict"]
    weight, bias = state["head.weight"], state["head.bias"]
    state["head.weight"] = torch.cat([torch.zeros_like(weight), weight])
    state["head.bias"] = torch.cat([torch.full_like(bias, -1e4), bias])
    torch.save(state, root / "vit20.pth")
    (root / "digits20.yaml").write_text((trained / "digits.yaml").read_text().replace("num_classes: 10", "num_classes: 20"))
    (root / "map.txt").write_text("".join(f"x{i}\n" for i in range(10)) + "".join(f"{i}\n" for i in range(10)))
    return root


def test_a_class_map_puts_the_folders_on_the_heads_indices(trained, wider, tmp_path):  # noqa: F811
    data = ["--checkpoint", str(wider / "vit20.pth"), "--data", str(trained / "val")]
    original = accuracies(profile(tmp_path, trained / "digits.yaml", "--checkpoint", str(trained / "vit.pth"),
                                  "--data", str(trained / "val")))
    assert accuracies(profile(tmp_path, wider / "digits20.yaml", *data, "--class-map", str(wider / "map.txt"))) == original
    refused = profile(tmp_path, wider / "digits20.yaml", *data)
    assert refused.exit_code == 2 and "has 10 classes and the model's head 20" in refused.output
    assert "--class-map FILE" in refused.output
    fidelity_only = profile(tmp_path, wider / "digits20.yaml", *data, "--fidelity")
    assert fidelity_only.exit_code == 0 and "accuracy not measured, fidelity only" in fidelity_only.output
    rows = json.loads(fidelity_only.stdout)["rows"]
    assert "acc" not in rows[0] and rows[0]["fidelity_top1"] == 100.0


def test_a_class_map_that_lacks_a_class_or_overflows_the_head_is_refused(trained, wider, tmp_path):  # noqa: F811
    data = ["--checkpoint", str(wider / "vit20.pth"), "--data", str(trained / "val")]
    short = tmp_path / "short.txt"
    short.write_text("".join(f"{i}\n" for i in range(9)))
    lacking = profile(tmp_path, wider / "digits20.yaml", *data, "--class-map", str(short))
    assert lacking.exit_code == 2 and "lacks classes of --data" in lacking.output and ": 9 (1)" in lacking.output
    long = tmp_path / "long.txt"
    long.write_text("".join(f"x{i}\n" for i in range(15)) + "".join(f"{i}\n" for i in range(10)))
    beyond = profile(tmp_path, wider / "digits20.yaml", *data, "--class-map", str(long))
    assert beyond.exit_code == 2 and "beyond the model's 20 classes" in beyond.output


def test_a_hugging_face_dataset_on_disk_reads_like_the_folder(trained, tmp_path):  # noqa: F811
    datasets = pytest.importorskip("datasets")
    classes = sorted((p.name for p in (trained / "val").iterdir()), key=int)
    files = [(str(f), label) for label, name in enumerate(classes) for f in sorted((trained / "val" / name).iterdir())]
    features = datasets.Features({"img": datasets.Image(), "digit": datasets.ClassLabel(names=classes)})
    table = datasets.Dataset.from_dict({"img": [f for f, _ in files], "digit": [y for _, y in files]}, features=features)
    table.save_to_disk(str(tmp_path / "hf" / "validation"))
    datasets.DatasetDict({"validation": table}).save_to_disk(str(tmp_path / "hfdict"))
    checkpoint = ["--checkpoint", str(trained / "vit.pth")]
    folder = accuracies(profile(tmp_path, trained / "digits.yaml", *checkpoint, "--data", str(trained / "val")))
    hf = accuracies(profile(tmp_path, trained / "digits.yaml", *checkpoint, "--data", str(tmp_path / "hf" / "validation")))
    assert hf == folder and hf[0][1] == 360
    splits = profile(tmp_path, trained / "digits.yaml", *checkpoint, "--data", str(tmp_path / "hfdict"))
    assert splits.exit_code == 2 and "holds several splits (validation)" in splits.output
