"""Bad input raises a clear ValueError / TypeError naming the argument, before any result."""

from __future__ import annotations

import pytest
import torch

import fastaevb
from conftest import device_for
from fastaevb import functional as F


def t(*shape, dtype=torch.float32, device="cpu"):
    return torch.rand(shape, dtype=dtype, device=device)


METADATA_ERRORS = {
    "mismatched shapes": (lambda: F.bernoulli_log_likelihood(t(3, 4), t(3, 5)), ValueError, "logits .* x"),
    "drop-in target size": (lambda: F.binary_cross_entropy(t(3, 4), t(4, 3)), ValueError, "target size"),
    "integer logits": (
        lambda: F.bernoulli_log_likelihood(torch.ones(3, 4, dtype=torch.int64), t(3, 4)),
        TypeError,
        "logits",
    ),
    "complex logits": (
        lambda: F.binary_cross_entropy_with_logits(t(3, 4, dtype=torch.complex64), t(3, 4)),
        TypeError,
        "input",
    ),
    "int16 target": (lambda: F.bernoulli_log_likelihood(t(3, 4), torch.ones(3, 4, dtype=torch.int16)), TypeError, "x"),
    "mixed devices": (lambda: F.bernoulli_log_likelihood(t(3, 4), t(3, 4, device="meta")), ValueError, "x is on meta"),
    "mixed devices kl": (lambda: F.gaussian_kl(t(3, 4), t(3, 4, device="meta")), ValueError, "logvar is on meta"),
    "samples < 1": (lambda: F.reparameterize(t(3, 4), t(3, 4), samples=0), ValueError, "samples"),
    "samples not int": (lambda: F.reparameterize(t(3, 4), t(3, 4), samples=2.0), TypeError, "samples"),
    "wrong reduction": (lambda: F.gaussian_kl(t(3, 4), t(3, 4), reduction="avg"), ValueError, "reduction"),
    "wrong drop-in reduction": (
        lambda: F.binary_cross_entropy(t(3), t(3), reduction="batchmean"),
        ValueError,
        "reduction",
    ),
    "weight not broadcastable": (
        lambda: F.binary_cross_entropy(t(3, 4), t(3, 4), weight=t(3)),
        ValueError,
        r"weight of shape \(3,\) does not broadcast to input's shape \(3, 4\).*per class",
    ),
    "weight broadcasts beyond the input": (
        lambda: F.binary_cross_entropy_with_logits(t(3, 4), t(3, 4), weight=t(2, 3, 4)),
        ValueError,
        "weight of shape .* does not broadcast to input's shape",
    ),
    "pos_weight not broadcastable": (
        lambda: F.binary_cross_entropy_with_logits(t(3, 4), t(3, 4), pos_weight=t(3)),
        ValueError,
        r"pos_weight of shape \(3,\) does not broadcast .* one weight per class",
    ),
    "complex weight": (
        lambda: F.binary_cross_entropy_with_logits(t(3), t(3), weight=t(3, dtype=torch.complex64)),
        TypeError,
        "weight must be real",
    ),
    "weight not a tensor": (
        lambda: F.binary_cross_entropy(t(3), t(3), weight=[1.0, 2.0, 3.0]),
        TypeError,
        "weight must be a torch.Tensor",
    ),
    "pos_weight on another device": (
        lambda: F.binary_cross_entropy_with_logits(t(3), t(3), pos_weight=t(3, device="meta")),
        ValueError,
        "pos_weight is on meta",
    ),
    "weight requiring grad": (
        lambda: F.binary_cross_entropy(t(3), t(3), weight=t(3).requires_grad_()),
        ValueError,
        "weight must not require grad: torch does not differentiate",
    ),
    "pos_weight requiring grad": (
        lambda: F.binary_cross_entropy_with_logits(t(3), t(3), pos_weight=t(3).requires_grad_()),
        ValueError,
        "pos_weight must not require grad",
    ),
    "eps shape": (lambda: F.reparameterize(t(3, 4), t(3, 4), samples=2, eps=t(3, 4)), ValueError, "eps"),
    "logvar shape": (lambda: F.reparameterize(t(3, 4), t(3, 5)), ValueError, "logvar"),
    "logvar dtype": (lambda: F.gaussian_kl(t(3, 4), t(3, 4, dtype=torch.float64)), TypeError, "logvar"),
    "gaussian logvar shape": (lambda: F.gaussian_log_likelihood(t(3, 4), t(3, 4), t(3, 2)), ValueError, "logvar"),
    "scalar mu": (lambda: F.gaussian_kl(t(), t()), ValueError, "mu"),
    "not a tensor": (lambda: F.bernoulli_log_likelihood([1.0], t(1)), TypeError, "logits"),
    "unknown likelihood": (lambda: fastaevb.SGVBLoss("poisson"), ValueError, "likelihood"),
    "unknown backend": (lambda: fastaevb.use_backend("cuda-graphs").__enter__(), ValueError, "backend"),
}


@pytest.mark.parametrize("case", METADATA_ERRORS)
def test_metadata_errors(case):
    call, error, message = METADATA_ERRORS[case]
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("name", ["weight", "pos_weight"])
def test_bad_factor_raises_before_any_kernel(kernel_backend, name, monkeypatch):
    """A weight error is raised by the argument checks: no kernel runs (nothing is computed)."""
    from fastaevb.ops import calls

    def no_kernel(*args, **kwargs):
        raise AssertionError("a kernel ran before the argument checks")

    monkeypatch.setattr(calls, "kernels_for", no_kernel)
    with pytest.raises(ValueError, match=name):
        F.binary_cross_entropy_with_logits(t(3, 4), t(3, 4), **{name: t(5)})


VALUE_ERRORS = {
    "float target above 1": (
        F.bernoulli_log_likelihood,
        lambda d: (t(4, 6, device=d), torch.full((4, 6), 1.5, device=d)),
        "target",
    ),
    "float target below 0": (
        F.binary_cross_entropy_with_logits,
        lambda d: (t(4, 6, device=d), -t(4, 6, device=d) - 0.1),
        "target",
    ),
    "uint8 target of 2": (
        F.bernoulli_log_likelihood,
        lambda d: (t(4, 6, device=d), torch.full((4, 6), 2, dtype=torch.uint8, device=d)),
        "target",
    ),
    "probs above 1": (
        F.bernoulli_probs_log_likelihood,
        lambda d: (t(4, 6, device=d) + 1.01, t(4, 6, device=d)),
        "input",
    ),
    "drop-in probs below 0": (
        F.binary_cross_entropy,
        lambda d: (-t(4, 6, device=d) - 0.01, t(4, 6, device=d)),
        "input",
    ),
    "drop-in probs target": (F.binary_cross_entropy, lambda d: (t(4, 6, device=d), t(4, 6, device=d) + 1.01), "target"),
}


@pytest.mark.parametrize("case", VALUE_ERRORS)
def test_out_of_range_values_are_flagged(backend, case):
    fn, make, message = VALUE_ERRORS[case]
    with pytest.raises(ValueError, match=f"{message}.*must lie in \\[0, 1\\]"):
        fn(*make(device_for(backend)))
