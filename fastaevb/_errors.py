"""Errors raised from inside the ops, after a kernel has flagged a value it cannot accept."""

from __future__ import annotations

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
