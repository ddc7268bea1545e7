"""Published weights through timm's own hub loading (`timm.create_model(..., pretrained=True)`), and a
one-line answer where the machine cannot reach the hub: which file to fetch elsewhere and pass instead."""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager

from torch import nn

from ..errors import GtpcliError

HUB_HOST = "huggingface.co"


def create_pretrained(name: str, pretrained: bool = True, **kwargs) -> nn.Module:
    """timm's model `name` (a timm name, with or without a pretrained tag, or hf-hub:ORG/REPO) with its
    published weights. Weights already in the local hub cache load without network; otherwise, where the
    hub cannot be reached, the error says so at once instead of after a minute of retries."""
    import timm

    with offline_unless(reachable(HUB_HOST)):
        try:
            return timm.create_model(name, pretrained=pretrained, **kwargs)
        except Exception as exc:  # huggingface_hub, urllib and timm raise many kinds
            if is_unreachable(exc):
                raise GtpcliError(f"cannot download the weights of {name}: {HUB_HOST} cannot be reached from here "
                                  f"({type(exc).__name__}) and they are not in the local cache; download them on a "
                                  f"machine with network access ({where(name)}) and pass it with --checkpoint FILE and the "
                                  "timm model name, instead of --pretrained or hf-hub:") from None
            raise


def where(name: str) -> str:
    """Where timm would fetch the weights of `name` from, for the user to fetch by hand."""
    try:
        from timm.models import get_pretrained_cfg

        if name.startswith("hf-hub:"):
            return f"https://huggingface.co/{name.removeprefix('hf-hub:')}"
        import timm.models

        model_name, tag = timm.models.split_model_name_tag(name)
        cfg = get_pretrained_cfg(f"{model_name}.{tag}" if tag else model_name)
        if cfg is not None and cfg.hf_hub_id:
            return f"https://huggingface.co/{cfg.hf_hub_id}"
        if cfg is not None and cfg.url:
            return cfg.url
    except Exception:
        pass
    return "see timm's model card"


def reachable(host: str, timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def offline_unless(online: bool):
    """HF_HUB_OFFLINE=1 while `online` is false, so the hub client reads its cache and does not retry."""
    if online:
        yield
        return
    from huggingface_hub import constants

    saved_env, saved = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], constants.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def is_unreachable(exc: BaseException) -> bool:
    """Whether the exception (or one it came from) is the network or the hub's cache saying no."""
    from urllib.error import URLError

    names = ("LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectTimeout", "ConnectError")
    while exc is not None:
        if isinstance(exc, (URLError, ConnectionError, socket.gaierror, TimeoutError)) or type(exc).__name__ in names:
            return True
        exc = exc.__cause__ or exc.__context__
    return False
