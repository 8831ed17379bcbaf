"""Checkpoints: written atomically (temp file, fsync, rename), validated on load.

A checkpoint is a plain dict (loadable with ``torch.load(weights_only=True)``) holding the
model config, the training options that must not change on resume, model and optimizer
states, the trainer's RNG states, the position in the data and the log history. A file that is
corrupt, truncated, not a fastaevb checkpoint, or made for another model or run gets a
:class:`CheckpointError` naming the file and the problem; it is never overwritten by a failed
resume.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

FORMAT = "fastaevb-aevb-checkpoint"
VERSION = 1
REQUIRED = ("format", "version", "model_config", "run_config", "model", "optimizer", "step", "rng", "history")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says which file and why."""


def save(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: readers see the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make checkpoints private
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def load(path: str | os.PathLike) -> dict:
    """Read and validate a checkpoint; :class:`CheckpointError` for anything unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (an interrupted copy?); it is not a usable checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip errors, unpickling errors, EOF: all mean the same to the user
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fastaevb training checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {state.get('version')}, this fastaevb reads {VERSION}"
        )
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
    return state


def check_compatible(path: str | os.PathLike, stored: Mapping[str, Any], wanted: Mapping[str, Any], what: str) -> None:
    """Raise :class:`CheckpointError` listing every option where ``stored`` and ``wanted`` differ."""
    diffs = [
        f"{key}: checkpoint has {stored.get(key)!r}, this run asks for {wanted.get(key)!r}"
        for key in sorted(set(stored) | set(wanted))
        if stored.get(key) != wanted.get(key)
    ]
    if diffs:
        raise CheckpointError(
            f"{path}: checkpoint does not match this run's {what} ({'; '.join(diffs)}); "
            "resume with the original options, or train into another --out"
        )
