"""Is a weights download possible right now? Answered in seconds, never by a retry loop.

Offline clusters and this machine have no route to model hubs; a bare `pretrained=True` there
retries for ~45 s. Stages ask here first and fail in one line pointing at the local-file param.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import threading
from typing import Callable
from urllib.parse import urlparse


def offline() -> bool:
    """HF_HUB_OFFLINE set (the env var or huggingface_hub's resolved constant)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def reachable(url: str, timeout: float = 2.0) -> bool:
    """A TCP connect to the URL's host, bounded in wall time (DNS included) by a thread."""
    u = urlparse(url)
    host, port = u.hostname or "", u.port or (80 if u.scheme == "http" else 443)
    ok: list[bool] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def cached(hub_id: str, filename: str) -> str | None:
    """The local path of a file of Hugging Face repo `hub_id` when the cache holds it (no download)."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(hub_id, filename)
    return path if isinstance(path, str) else None


def not_served(in_cache: bool) -> str | None:
    """None when the hub can serve a model's weights (`in_cache`, or online with the endpoint
    reachable), else why it cannot."""
    if in_cache or (not offline() and reachable(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))):
        return None
    return "HF_HUB_OFFLINE is set" if offline() else "the hub is unreachable"


def unavailable(what: str, library: str, resolve: Callable[[], object],
                error: type[Exception]) -> str | None:
    """Why `what` (a hub model) cannot be loaded here, or None: `library` is not installed, or
    `resolve()`, which finds its weights without downloading, raises `error`. Quick: the library
    is looked up, not imported."""
    if importlib.util.find_spec(library) is None:
        return f"{what} needs the {library} package (pip install {library})"
    try:
        resolve()
    except error as e:
        return str(e)
    return None
