"""Accuracy on local images read by timm's dataset readers (a folder of class folders, or a .tar of them;
class order as timm trains with: natural sort of the folder names, or a --class-map file), or a Hugging Face
dataset saved to disk (`Dataset.save_to_disk`: its image column, its ClassLabel column's order) with the
backbone's own eval transform, and fidelity: how often a reduced model agrees with the unreduced one, on
any images."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import ShardedBatches
from ..errors import GtpcliError


def check_folder(data: Path, fidelity: bool) -> None:
    """Before anything is measured: a folder of class sub-folders or a .tar of them (accuracy), or a
    folder of images (--fidelity)."""
    if (data.is_file() and data.suffix == ".tar") or hf_saved(data):
        return
    if not data.is_dir():
        raise GtpcliError(f"--data: not a directory (or a .tar of class folders): {data}")
    try:
        labelled = any(entry.is_dir() for entry in data.iterdir())
    except OSError as exc:
        raise GtpcliError(f"--data {data}: cannot list it ({exc.strerror or exc})") from None
    if not labelled and not fidelity:
        raise GtpcliError(f"--data {data} has no class sub-folders, so its images have no labels for "
                          "accuracy; add --fidelity to measure agreement with the unreduced model on them")


def data_loader(model: nn.Module, folder: Path, batch_size: int, limit: int | None, image_size: tuple[int, int],
                skip: int = 0, rank: int = 0, size: int = 1, class_map: Path | None = None, fidelity: bool = False):
    """A DataLoader over `folder` with timm's eval transform for this model; `limit` takes a fixed
    random subset (seed 0), so repeated runs and every sweep point see the same images; `skip` passes over
    the first `skip` images of that same order (a held-out subset, disjoint from the first `skip`). Of
    `size` processes, this one (`rank`) gets every size-th batch of the single-process order (see
    ShardedBatches). An image that cannot be read stops the run, naming the file (see `predict`). Labels
    are checked against the model's head (see `labels_fit`)."""
    from timm.data import create_transform, resolve_data_config

    check_folder(folder, fidelity=True)
    config = resolve_data_config({"input_size": (3, *image_size)}, model=model)
    transform = create_transform(**config)
    if hf_saved(folder) or folder.is_file() or any(entry.is_dir() for entry in folder.iterdir()):
        images = (HfImages if hf_saved(folder) else ReaderImages)(folder, transform, class_map)
        if not labels_fit(images.classes, getattr(model, "num_classes", 0), folder, class_map, fidelity):
            images.labelled = False
        dataset = Checked(images, images.files, image_size)
    else:
        images = UnlabeledImages(folder, transform)
        dataset = Checked(images, images.files, image_size)
    if skip or (limit is not None and limit < len(dataset)):
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
        chosen = order[skip:] if limit is None else order[skip:skip + limit]
        dataset = torch.utils.data.Subset(dataset, sorted(chosen.tolist()))
    workers = min(4, os.cpu_count() or 1)
    batches = ShardedBatches(len(dataset), batch_size, rank, size)
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers)


def labels_fit(classes: dict[str, int], head: int, data: Path, class_map: Path | None, fidelity: bool) -> bool:
    """Whether the data's class indices are the model's: as many classes as the head has, or a class map
    whose indices fall inside the head. With --fidelity a mismatch drops the labels (agreement needs
    none); without, it is the user's error, said in one line."""
    if class_map is not None:
        beyond = {name: index for name, index in classes.items() if not 0 <= index < head}
        if beyond:
            raise GtpcliError(f"--class-map {class_map}: indices beyond the model's {head} classes "
                              f"({', '.join(f'{k}={v}' for k, v in list(beyond.items())[:3])})")
        return True
    if len(classes) == head:
        return True
    problem = (f"--data {data} has {len(classes)} classes and the model's head {head}: its labels are not the "
               "model's class indices; give --class-map FILE (one class folder name per line, in the head's "
               "order, as timm reads it)")
    if not fidelity:
        raise GtpcliError(problem)
    from ..models.backbones import note
    note(problem.replace("; give", ": accuracy not measured, fidelity only; for accuracy give"))
    return False


class ReaderImages(torch.utils.data.Dataset):
    """(image, label) from timm's reader for a folder of class folders or a .tar of them
    (`timm.data.readers.create_reader`, what `timm.data.create_dataset` reads), opened and transformed
    here so that a broken image is reported (see Checked) instead of skipped, as timm's dataset does."""

    def __init__(self, data: Path, transform, class_map: Path | None = None):
        from timm.data.readers import create_reader

        if class_map is not None:
            self._check_map(data, class_map)
        try:
            self.reader = create_reader("", root=str(data), class_map=str(class_map) if class_map else "")
        except (RuntimeError, OSError, AssertionError, ValueError) as exc:
            raise GtpcliError(f"--data {data}: no images found in class folders ({' '.join(str(exc).split())})") from None
        self.classes = dict(getattr(self.reader, "class_to_idx", None) or self.reader.class_name_to_idx)
        self.files = [Path(self.reader.filename(i, absolute=True)) for i in range(len(self.reader))]
        self.transform, self.labelled = transform, True

    @staticmethod
    def _check_map(data: Path, class_map: Path) -> None:
        """timm drops the images of a class missing from the map; here that is an error."""
        from timm.data.readers.class_map import load_class_map

        if not class_map.is_file() or class_map.suffix not in (".txt",):
            raise GtpcliError(f"--class-map {class_map}: not a .txt file (one class name per line)")
        known = load_class_map(str(class_map))
        if data.is_dir():
            missing = sorted(entry.name for entry in data.iterdir() if entry.is_dir() and entry.name not in known)
            if missing:
                raise GtpcliError(f"--class-map {class_map} lacks classes of --data {data}: {', '.join(missing[:5])}"
                                  f"{' ...' if len(missing) > 5 else ''} ({len(missing)})")

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int):
        from PIL import Image

        file, target = self.reader[index]
        with Image.open(file) as image:
            return self.transform(image.convert("RGB")), int(target) if self.labelled else -1


def hf_saved(data: Path) -> bool:
    """A folder written by `datasets.Dataset.save_to_disk` (or a DatasetDict's, which holds splits)."""
    return data.is_dir() and any((data / name).is_file() for name in ("state.json", "dataset_dict.json"))


class HfImages(torch.utils.data.Dataset):
    """(image, label) from a Hugging Face dataset saved to disk: the column of Image feature type, and the
    ClassLabel column whose names give the class order (or --class-map, by those names)."""

    def __init__(self, data: Path, transform, class_map: Path | None = None):
        try:
            import datasets
        except ImportError:
            raise GtpcliError(f"--data {data} is a Hugging Face dataset on disk: reading it needs the `datasets` "
                              "package (pip install datasets)") from None
        if (data / "dataset_dict.json").is_file():
            splits = json.loads((data / "dataset_dict.json").read_text()).get("splits", [])
            raise GtpcliError(f"--data {data} holds several splits ({', '.join(splits)}): give one, e.g. "
                              f"{data / (splits[-1] if splits else 'validation')}")
        self.table = datasets.load_from_disk(str(data))
        features = self.table.features
        image = [name for name, kind in features.items() if isinstance(kind, datasets.Image)]
        label = [name for name, kind in features.items() if isinstance(kind, datasets.ClassLabel)]
        if not image or not label:
            raise GtpcliError(f"--data {data}: a Hugging Face dataset needs an Image column and a ClassLabel "
                              f"column, it has {', '.join(f'{k} ({type(v).__name__})' for k, v in features.items())}")
        self.image, self.label = image[0], label[0]
        names = features[self.label].names
        self.index = list(range(len(names)))
        if class_map is not None:
            self.index = self._mapped(names, class_map)
        self.classes = {name: self.index[i] for i, name in enumerate(names)}
        self.files = [f"{data}[{i}]" for i in range(len(self.table))]
        self.transform, self.labelled = transform, True

    @staticmethod
    def _mapped(names: list[str], class_map: Path) -> list[int]:
        from timm.data.readers.class_map import load_class_map

        if not class_map.is_file() or class_map.suffix not in (".txt",):
            raise GtpcliError(f"--class-map {class_map}: not a .txt file (one class name per line)")
        known = load_class_map(str(class_map))
        missing = [name for name in names if name not in known]
        if missing:
            raise GtpcliError(f"--class-map {class_map} lacks classes of the dataset: {', '.join(missing[:5])}"
                              f"{' ...' if len(missing) > 5 else ''} ({len(missing)})")
        return [known[name] for name in names]

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int):
        item = self.table[index]
        label = self.index[item[self.label]] if self.labelled else -1
        return self.transform(item[self.image].convert("RGB")), label


class Checked(torch.utils.data.Dataset):
    """(image, label, problem): an image that cannot be read or transformed comes back as zeros with a
    one-line description of what went wrong, instead of an exception lost in a DataLoader worker."""

    def __init__(self, dataset, files: list[Path], image_size: tuple[int, int]):
        self.dataset, self.files, self.image_size = dataset, files, image_size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            image, label = self.dataset[index]
            return image, label, ""
        except Exception as exc:  # PIL and the transforms raise many kinds for a broken file
            detail = " ".join(str(exc).split())
            if not detail or str(self.files[index]) in detail:  # PIL repeats the file name in its message
                detail = type(exc).__name__
            return torch.zeros(3, *self.image_size), -1, f"{self.files[index]} ({detail})"


class UnlabeledImages(torch.utils.data.Dataset):
    """A flat folder of images without classes (label -1): enough for --fidelity."""

    def __init__(self, folder: Path, transform):
        from torchvision.datasets.folder import IMG_EXTENSIONS
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
        if not self.files:
            raise GtpcliError(f"--data {folder}: no images and no class folders")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        from PIL import Image
        with Image.open(self.files[index]) as image:
            return self.transform(image.convert("RGB")), -1


@dataclass
class Predictions:
    """One process's share of the images: logits (CPU, float32) and labels per batch, and each batch's
    place in the single-process order."""
    logits: list[torch.Tensor]
    labels: list[torch.Tensor]
    batches: list[int]


def predict(model: nn.Module, loader, device: str, dtype: torch.dtype, step: Callable[[int], None] | None = None) -> Predictions:
    """The model's outputs on every batch of `loader` (a DataLoader, or any iterable of its batches)."""
    logits, labels = [], []
    with torch.inference_mode():
        for images, targets, problems in loader:
            broken = [problem for problem in problems if problem]
            if broken:
                more = f" (and {len(broken) - 1} more in the same batch)" if len(broken) > 1 else ""
                raise GtpcliError(f"--data: cannot read image {broken[0]}{more}; fix or remove it "
                                  "(the accuracy of a sweep is measured on every image)")
            logits.append(model(images.to(device, dtype)).float().cpu())
            labels.append(targets)
            if step:
                step(len(targets))
    numbers = batch_order(loader)
    return Predictions(logits, labels, list(range(len(logits))) if numbers is None else numbers)


def batch_order(loader) -> list[int] | None:
    """Each batch's place in the single-process order, for a loader of this process's share (see
    data_loader); None for any other iterable of batches (its own order)."""
    sharded = getattr(loader, "batch_sampler", None)
    return sharded.numbers() if isinstance(sharded, ShardedBatches) else None


def image_order(loader) -> list[tuple[int, list[str]]]:
    """The images a loader of `data_loader` presents: each batch's place in the single-process order and
    its files, in this process's order. Two loaders with the same order give predictions that `counts`
    may pair batch by batch."""
    dataset, chosen = loader.dataset, range(len(loader.dataset))
    if isinstance(dataset, torch.utils.data.Subset):
        dataset, chosen = dataset.dataset, dataset.indices
    return [(number, [str(dataset.files[chosen[i]]) for i in batch]) for number, batch in loader.batch_sampler.batches]


def counts(p: Predictions, full: Predictions | None = None) -> list[dict[str, Any]]:
    """Per batch: images, top-1 and top-5 hits, and against the unreduced model's `full` predictions
    the top-1 agreements and the summed KL(full || reduced). Integers, and one float per batch: any split
    of the batches over processes adds up to exactly the single-process figures (see `summary`)."""
    found = []
    for at, (logits, labels, batch) in enumerate(zip(p.logits, p.labels, p.batches)):
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        row = {"batch": batch, "n": len(labels), "labelled": bool((labels >= 0).all()),
               "top1": int((top5[:, 0] == labels).sum()), "top5": int((top5 == labels.unsqueeze(1)).any(dim=1).sum())}
        if full is not None:
            reference = full.logits[at]
            row["agree"] = int((logits.argmax(1) == reference.argmax(1)).sum())
            row["kl"] = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(reference, 1), log_target=True,
                                 reduction="sum").item()
        found.append(row)
    return found


def summary(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Top-1 and top-5 in %, with a 95% Wilson interval on top-1 (it matters with --limit); with fidelity
    counts, top-1 agreement (%) with the unreduced model and mean KL(full || reduced) of the softmax
    outputs. Summed in the single-process batch order, wherever the batches were computed."""
    batches = sorted(batches, key=lambda row: row["batch"])
    n = sum(row["n"] for row in batches)
    found: dict[str, Any] = {}
    if n and all(row["labelled"] for row in batches):  # unlabeled images: fidelity only
        correct1, correct5 = sum(row["top1"] for row in batches), sum(row["top5"] for row in batches)
        low, high = wilson(correct1, n)
        found |= {"acc": round(100 * correct1 / n, 2), "acc5": round(100 * correct5 / n, 2), "acc_n": n,
                  "acc_ci95": [round(100 * low, 2), round(100 * high, 2)]}
    if n and "agree" in batches[0]:
        kl = 0.0
        for row in batches:  # in batch order, so the float sum is the same however the batches were shared
            kl += row["kl"]
        agree = sum(row["agree"] for row in batches)
        low, high = wilson(agree, n)
        found |= {"fidelity_top1": round(100 * agree / n, 2), "fidelity_kl": round(max(kl / n, 0.0), 6),
                  "fidelity_ci95": [round(100 * low, 2), round(100 * high, 2)]}
    return found


def accuracy(p: Predictions) -> dict[str, Any]:
    """Top-1 and top-5 in %, with a 95% Wilson interval on top-1, of one process's predictions."""
    return summary(counts(p))


def fidelity(reduced: Predictions, full: Predictions) -> dict[str, Any]:
    """Top-1 agreement (%) with the unreduced model and mean KL(full || reduced), of one process's predictions."""
    return {k: v for k, v in summary(counts(reduced, full)).items() if k.startswith("fidelity_")}


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
