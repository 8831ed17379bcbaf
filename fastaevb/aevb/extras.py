"""The ``train`` extra's modules (``pip install 'fastaevb[train]'``): which ones a command needs,
checked at start-up, before any work; and the progress bar, which without ``tqdm`` is none."""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any

INSTALL = "pip install 'fastaevb[train]'"
# each module of the extra, what needs it, and the option that does without it
MODULES = {"tqdm": ("the progress bar", "--no-progress"), "matplotlib": ("the pictures", "--no-figures")}


def needed(args: argparse.Namespace) -> list[str]:
    """The extra's modules the command ``args`` will import."""
    wanted = ["tqdm"] if getattr(args, "progress", False) else []
    if args.command == "sample" or getattr(args, "figures", False):
        wanted.append("matplotlib")
    return wanted


def missing_message(args: argparse.Namespace) -> str | None:
    """What to say when the command needs a module of the extra that is not installed, else None."""
    missing = [m for m in needed(args) if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    uses = ", ".join(f"{m} (for {MODULES[m][0]})" for m in missing)
    options = " ".join(MODULES[m][1] for m in missing)
    without = "" if args.command == "sample" else f", or run without them: {options}"
    return f"the 'train' extra is not installed: no {uses}. Install it with {INSTALL}{without}"


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, **options: Any):
    """``tqdm(**options)``, or a bar that draws nothing (without importing tqdm) when disabled."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(**options)
