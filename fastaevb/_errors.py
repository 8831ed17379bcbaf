"""Errors raised from inside the ops, after a kernel has flagged a value it cannot accept."""

from __future__ import annotations

import inspect
import os
import warnings

# Kernels name the torch drop-in arguments; the log-likelihood functions call them x and probs.
_SPELLED = {"target": "target (x)", "input": "input (probs)"}
# The likely cause of each, as users meet it.
_LIKELY_CAUSE = {
    "target": "if these are 8-bit pixel intensities (0..255), scale them to [0, 1] first, e.g. x / 255",
    "input": "probabilities are sigmoid outputs; if the decoder returns logits (no final sigmoid), use "
    "SGVBLoss('bernoulli') / bernoulli_log_likelihood / binary_cross_entropy_with_logits instead",
}


def check_range(count: int, name: str) -> None:
    """Raise if a kernel counted ``count`` values of argument ``name`` outside [0, 1].

    Kernels count these while they compute, so the check costs no extra pass over the
    data and ``torch.compile`` meets no data-dependent branch in user code.
    """
    if count:
        raise ValueError(
            f"{_SPELLED.get(name, name)} must lie in [0, 1] (integer and bool targets must be 0 or 1); "
            f"found {int(count)} value(s) outside that range. Likely cause: {_LIKELY_CAUSE.get(name, 'bad data')}"
        )


def check_counts(probs: bool, bad_in: int, bad_x: int, logits: int | None = None) -> None:
    """A Bernoulli kernel's two counts: ``bad_in`` is the probabilities outside [0, 1] (an error)
    when ``probs``, else the logits outside it, of which none among ``logits`` values warns."""
    if probs:
        check_range(bad_in, "input")
    elif logits is not None:
        warn_if_probabilities(bad_in, logits)
    check_range(bad_x, "target")


class ProbabilitiesAsLogitsWarning(UserWarning):
    """``likelihood='bernoulli'`` (logits) got a large decoder output whose every value lies in
    [0, 1]: most likely sigmoid outputs, the decoder's final sigmoid still in place after a swap
    to the logits loss (a different objective, trained without an error). Silence it with
    ``warnings.filterwarnings("ignore", category=fastaevb.ProbabilitiesAsLogitsWarning)``."""


# Logits of a real decoder fall on both sides of 0; this many values all in [0, 1] are probabilities.
LOGITS_CHECKED_FROM = 4096


def warn_if_probabilities(outside_unit: int, count: int) -> None:
    """Warn (once per call site, Python's default filter) when the kernel found none of ``count``
    logits outside [0, 1]; it counted them in its one pass over the logits (on the CPU backends)."""
    if outside_unit == 0 and count >= LOGITS_CHECKED_FROM:
        warnings.warn(
            f"likelihood='bernoulli' takes logits, but all {count} values of recon lie in [0, 1]: they look "
            "like probabilities (is the decoder's final sigmoid still in place?). Pass "
            "likelihood='bernoulli_probs' for probabilities, or remove the sigmoid.",
            ProbabilitiesAsLogitsWarning,
            stacklevel=_caller_level(),
        )


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside fastaevb (and torch): the user's loss line,
    which the warning names and which Python's filter keys "once" on."""
    package = os.path.dirname(__file__)
    here = inspect.currentframe()
    frame, level = here.f_back if here else None, 1
    while frame is not None and (frame.f_code.co_filename.startswith(package) or "/torch/" in frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    return level
