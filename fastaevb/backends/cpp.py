"""C++ / OpenMP CPU backend: the entry points of ``docs/backends.md`` over ``fastaevb._C``.

Each entry point hands the raw data pointers of the outputs it is given (allocated by
``fastaevb/ops/calls.py`` from the op's shape rule) and of the (contiguous, CPU, float32 /
float64) inputs, with sizes and dtype codes, to the extension (which releases the GIL and runs
``torch.get_num_threads()`` OpenMP threads), and turns the out-of-range counts the kernel
returns into :func:`fastaevb._errors.check_counts` errors. No math happens here. Upstream
gradients are made contiguous here because autograd may hand in expanded ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _C  # type: ignore[attr-defined]  # the compiled extension (CMakeLists.txt)
from .._errors import check_counts

try:  # the C++ autograd nodes: built when torch was importable at build time (CMakeLists.txt)
    from .. import _autograd  # type: ignore[attr-defined]
except ImportError:
    _autograd = None

DTYPES = (torch.float32, torch.float64)

_DTYPE_CODE = {torch.float32: 0, torch.float64: 1}
_REDUCTION = _C.REDUCTIONS
_U64 = (1 << 64) - 1
# The likelihoods whose decoder_logvar slot holds a scale: a Gaussian log-variance, or the mse / l1
# log-scale, (R, D) or one shared value.
_SCALED_LIKELIHOODS = ("gaussian", "mse", "l1")
_num_threads = torch.get_num_threads


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _contig(t: Tensor | None) -> Tensor | None:
    # Keep the result referenced until the kernel returns: its pointer is all _C gets.
    return None if t is None else t.contiguous()


def _wanted(*grads: Tensor) -> bool:
    """Gradients are written when any gradient output is not the empty placeholder (with no rows,
    a shared log-variance's gradient is still wanted: 0)."""
    return any(g.numel() > 0 for g in grads)


def _target(x: Tensor, dtype: torch.dtype) -> tuple[Tensor, int]:
    """Targets go in as the input's float type (code 0) or as bytes (uint8 / bool, code 1)."""
    if x.dtype == dtype:
        return x, 0
    if x.dtype == torch.uint8 or x.dtype == torch.bool:
        return x, 1
    return x.to(dtype), 0


# --------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------


def randn(seed: int, offsets: Tensor) -> Tensor:
    """``triton.language.randn(seed, offsets)`` on the CPU: float32, shape of ``offsets``."""
    offsets = offsets.to(torch.int64).contiguous()
    out = torch.empty(offsets.shape, dtype=torch.float32)
    _C.randn(out.data_ptr(), offsets.data_ptr(), offsets.numel(), int(seed) & _U64, _num_threads())
    return out


# --------------------------------------------------------------------------------------
# Reparameterization + KL
# --------------------------------------------------------------------------------------


def reparameterize_kl_forward(
    z: Tensor,
    kl: Tensor,
    log_q: Tensor,
    log_p: Tensor,
    mu: Tensor,
    logvar: Tensor,
    eps: Tensor | None,
    seed: int,
    samples: int,
) -> None:
    R, J = mu.shape
    _C.reparameterize_kl_forward(
        z.data_ptr(), _ptr(kl) if kl.numel() else 0, log_q.data_ptr(), log_p.data_ptr(),
        mu.data_ptr(), logvar.data_ptr(), _ptr(eps), int(seed) & _U64,
        samples, R, J, log_q.numel() > 0, _DTYPE_CODE[mu.dtype], _num_threads(),
    )  # fmt: skip


def reparameterize_kl_backward(
    grad_mu: Tensor,
    grad_logvar: Tensor,
    grad_z: Tensor | None,
    grad_kl: Tensor | None,
    grad_log_q: Tensor | None,
    grad_log_p: Tensor | None,
    mu: Tensor,
    logvar: Tensor,
    eps: Tensor | None,
    seed: int,
    samples: int,
) -> None:
    R, J = mu.shape
    grad_z, grad_kl = _contig(grad_z), _contig(grad_kl)
    grad_log_q, grad_log_p = _contig(grad_log_q), _contig(grad_log_p)
    _C.reparameterize_kl_backward(
        grad_mu.data_ptr(), grad_logvar.data_ptr(),
        _ptr(grad_z), _ptr(grad_kl), _ptr(grad_log_q), _ptr(grad_log_p),
        mu.data_ptr(), logvar.data_ptr(), _ptr(eps), int(seed) & _U64,
        samples, R, J, _DTYPE_CODE[mu.dtype], _num_threads(),
    )  # fmt: skip


# --------------------------------------------------------------------------------------
# Gaussian KL
# --------------------------------------------------------------------------------------


def gaussian_kl_forward(
    out: Tensor, grad_mu: Tensor, grad_logvar: Tensor, mu: Tensor, logvar: Tensor, reduction: str, scale: float
) -> None:
    R, J = mu.shape
    _C.gaussian_kl_forward(
        out.data_ptr(), grad_mu.data_ptr(), grad_logvar.data_ptr(), mu.data_ptr(),
        logvar.data_ptr(), R, J, _REDUCTION[reduction], float(scale), _wanted(grad_mu, grad_logvar),
        _DTYPE_CODE[mu.dtype], _num_threads(),
    )  # fmt: skip


def gaussian_kl_backward(
    grad_mu: Tensor, grad_logvar: Tensor, grad_out: Tensor, mu: Tensor, logvar: Tensor, reduction: str, scale: float
) -> None:
    grad_out = grad_out.contiguous()
    R, J = mu.shape
    _C.gaussian_kl_backward(
        grad_mu.data_ptr(), grad_logvar.data_ptr(), grad_out.data_ptr(), mu.data_ptr(),
        logvar.data_ptr(), R, J, _REDUCTION[reduction], float(scale),
        _DTYPE_CODE[mu.dtype], _num_threads(),
    )  # fmt: skip


# --------------------------------------------------------------------------------------
# Bernoulli decoder
# --------------------------------------------------------------------------------------


_NO_EXTRAS = _C.BernoulliExtras()


def _factor(t: Tensor | None, width: int) -> tuple[int, int, int]:
    """(address, row stride, column stride) of a broadcast (R, D) weight view; zeros when absent.
    The column stride only matters for rows wider than one element."""
    if t is None:
        return 0, 0, 0
    return t.data_ptr(), t.stride(0), t.stride(1) if width > 1 else 0


def _extras(weight: Tensor | None, pos_weight: Tensor | None, grad_x: Tensor, width: int):
    """The drop-ins' extras for ``_C`` (weights are kept alive by the caller's references)."""
    if weight is None and pos_weight is None and grad_x.numel() == 0:
        return _NO_EXTRAS
    return _C.BernoulliExtras(
        *_factor(weight, width), *_factor(pos_weight, width), _ptr(grad_x) if grad_x.numel() else 0
    )


def _logits_count(likelihood: str, decoded: Tensor) -> int | None:
    """How many logits the sgvb_loss kernel checked for looking like probabilities (None: not logits)."""
    return decoded.numel() if likelihood == "bernoulli" else None


def _bernoulli_forward(
    kernel,
    out: Tensor,
    grad: Tensor,
    grad_x: Tensor,
    decoded: Tensor,
    x: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: str,
    scale: float,
) -> None:
    """``_C.bernoulli*_forward``; raises on the out-of-range counts it returns (probabilities and
    targets, or targets alone for logits: their first count is sgvb_loss's, unused here)."""
    R, D = decoded.shape
    x, xtype = _target(x, decoded.dtype)
    bad = kernel(
        out.data_ptr(), grad.data_ptr(), decoded.data_ptr(), x.data_ptr(), R, x.shape[0], D,
        _REDUCTION[reduction], float(scale), grad.numel() > 0, _DTYPE_CODE[decoded.dtype], xtype,
        _num_threads(), _extras(weight, pos_weight, grad_x, D),
    )  # fmt: skip
    bad_in, bad_x = bad
    check_counts(kernel is _C.bernoulli_probs_log_likelihood_forward, bad_in, bad_x)


def _bernoulli_backward(
    kernel,
    grad: Tensor,
    grad_x: Tensor,
    grad_out: Tensor,
    decoded: Tensor,
    x: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: str,
    scale: float,
) -> None:
    grad_out = grad_out.contiguous()
    R, D = decoded.shape
    x, xtype = _target(x, decoded.dtype)
    kernel(
        grad.data_ptr(), grad_out.data_ptr(), decoded.data_ptr(), x.data_ptr(), R, x.shape[0], D,
        _REDUCTION[reduction], float(scale), _DTYPE_CODE[decoded.dtype], xtype, _num_threads(),
        _extras(weight, pos_weight, grad_x, D),
    )  # fmt: skip


def bernoulli_log_likelihood_forward(out, grad_logits, grad_x, logits, x, weight, pos_weight, reduction, scale):
    _bernoulli_forward(
        _C.bernoulli_log_likelihood_forward, out, grad_logits, grad_x, logits, x, weight, pos_weight, reduction, scale
    )


def bernoulli_log_likelihood_backward(grad_logits, grad_x, grad_out, logits, x, weight, pos_weight, reduction, scale):
    _bernoulli_backward(
        _C.bernoulli_log_likelihood_backward,
        grad_logits,
        grad_x,
        grad_out,
        logits,
        x,
        weight,
        pos_weight,
        reduction,
        scale,
    )


def bernoulli_probs_log_likelihood_forward(out, grad_probs, grad_x, probs, x, weight, reduction, scale):
    _bernoulli_forward(
        _C.bernoulli_probs_log_likelihood_forward, out, grad_probs, grad_x, probs, x, weight, None, reduction, scale
    )


def bernoulli_probs_log_likelihood_backward(grad_probs, grad_x, grad_out, probs, x, weight, reduction, scale):
    _bernoulli_backward(
        _C.bernoulli_probs_log_likelihood_backward,
        grad_probs,
        grad_x,
        grad_out,
        probs,
        x,
        weight,
        None,
        reduction,
        scale,
    )


# --------------------------------------------------------------------------------------
# Gaussian decoder
# --------------------------------------------------------------------------------------


def gaussian_log_likelihood_forward(
    out: Tensor,
    grad_mean: Tensor,
    grad_logvar: Tensor,
    x: Tensor,
    mean: Tensor,
    logvar: Tensor,
    reduction: str,
    scale: float,
) -> None:
    R, D = mean.shape
    _C.gaussian_log_likelihood_forward(
        out.data_ptr(), grad_mean.data_ptr(), grad_logvar.data_ptr(), x.data_ptr(),
        mean.data_ptr(), logvar.data_ptr(), R, x.shape[0], D, logvar.numel() == 1,
        _REDUCTION[reduction], float(scale), _wanted(grad_mean, grad_logvar), _DTYPE_CODE[mean.dtype],
        _num_threads(),
    )  # fmt: skip


def gaussian_log_likelihood_backward(
    grad_mean: Tensor,
    grad_logvar: Tensor,
    grad_out: Tensor,
    x: Tensor,
    mean: Tensor,
    logvar: Tensor,
    reduction: str,
    scale: float,
) -> None:
    grad_out = grad_out.contiguous()
    R, D = mean.shape
    _C.gaussian_log_likelihood_backward(
        grad_mean.data_ptr(), grad_logvar.data_ptr(), grad_out.data_ptr(), x.data_ptr(),
        mean.data_ptr(), logvar.data_ptr(), R, x.shape[0], D, logvar.numel() == 1,
        _REDUCTION[reduction], float(scale), _DTYPE_CODE[mean.dtype], _num_threads(),
    )  # fmt: skip


# --------------------------------------------------------------------------------------
# Error decoders (mse / l1 with a log-scale)
# --------------------------------------------------------------------------------------


def error_log_likelihood_forward(
    out: Tensor,
    grad_mean: Tensor,
    grad_log_scale: Tensor,
    x: Tensor,
    mean: Tensor,
    log_scale: Tensor,
    reduction: str,
    scale: float,
    power: int,
) -> None:
    R, D = mean.shape
    _C.error_log_likelihood_forward(
        out.data_ptr(), grad_mean.data_ptr(), grad_log_scale.data_ptr(), x.data_ptr(),
        mean.data_ptr(), log_scale.data_ptr(), R, x.shape[0], D, log_scale.numel() == 1,
        _REDUCTION[reduction], float(scale), int(power), _wanted(grad_mean, grad_log_scale),
        _DTYPE_CODE[mean.dtype], _num_threads(),
    )  # fmt: skip


def error_log_likelihood_backward(
    grad_mean: Tensor,
    grad_log_scale: Tensor,
    grad_out: Tensor,
    x: Tensor,
    mean: Tensor,
    log_scale: Tensor,
    reduction: str,
    scale: float,
    power: int,
) -> None:
    grad_out = grad_out.contiguous()
    R, D = mean.shape
    _C.error_log_likelihood_backward(
        grad_mean.data_ptr(), grad_log_scale.data_ptr(), grad_out.data_ptr(), x.data_ptr(),
        mean.data_ptr(), log_scale.data_ptr(), R, x.shape[0], D, log_scale.numel() == 1,
        _REDUCTION[reduction], float(scale), int(power), _DTYPE_CODE[mean.dtype], _num_threads(),
    )  # fmt: skip


# --------------------------------------------------------------------------------------
# The whole loss of a step (optional fused entry, see docs/backends.md)
# --------------------------------------------------------------------------------------


def sgvb_loss_forward(
    out: Tensor,
    grad_decoded: Tensor,
    grad_decoder_logvar: Tensor,
    grad_mu: Tensor,
    grad_logvar: Tensor,
    decoded: Tensor,
    x: Tensor,
    decoder_logvar: Tensor | None,
    mu: Tensor,
    logvar: Tensor,
    likelihood: str,
    kl_scale: float,
    ll_scale: float,
) -> None:
    """``kl_scale * sum KL - ll_scale * sum log p(x|z)`` and its gradients, one ``_C`` call."""
    R, D = decoded.shape
    scaled = likelihood in _SCALED_LIKELIHOODS
    x, xtype = (x, 0) if scaled else _target(x, decoded.dtype)
    bad_in, bad_x = _C.sgvb_loss_forward(
        out.data_ptr(), grad_decoded.data_ptr(), grad_decoder_logvar.data_ptr(), grad_mu.data_ptr(),
        grad_logvar.data_ptr(), decoded.data_ptr(), x.data_ptr(), _ptr(decoder_logvar), mu.data_ptr(),
        logvar.data_ptr(), R, x.shape[0], D, mu.shape[1], _C.LIKELIHOODS[likelihood],
        scaled and decoder_logvar is not None and decoder_logvar.numel() == 1, float(kl_scale), float(ll_scale),
        _wanted(grad_decoded, grad_decoder_logvar, grad_mu, grad_logvar),
        _DTYPE_CODE[decoded.dtype], xtype, _num_threads(),
    )  # fmt: skip
    check_counts(likelihood == "bernoulli_probs", bad_in, bad_x, _logits_count(likelihood, decoded))


def _given(t: Tensor) -> int:
    """The address of an output the shape rule asked for; 0 for an empty placeholder (not written)."""
    return t.data_ptr() if t.numel() else 0


def _iwae_loss(
    entry, grads: tuple, grad_out, decoded, x, decoder_logvar, z, mu, logvar, likelihood, gradient, reduction, scale
):
    K, B, J = z.shape
    scaled = likelihood in _SCALED_LIKELIHOODS
    x, xtype = (x, 0) if scaled else _target(x, decoded.dtype)
    return entry(
        *(_given(g) for g in grads), *(() if grad_out is None else (grad_out.data_ptr(),)),
        decoded.data_ptr(), x.data_ptr(), _ptr(decoder_logvar), z.data_ptr(), mu.data_ptr(), logvar.data_ptr(),
        K, B, decoded.shape[1], J, _C.LIKELIHOODS[likelihood],
        scaled and decoder_logvar is not None and decoder_logvar.numel() == 1, _C.IWAE_GRADIENTS[gradient],
        _REDUCTION[reduction], float(scale), _DTYPE_CODE[decoded.dtype], xtype, _num_threads(),
    )  # fmt: skip


def iwae_loss_forward(
    out, grad_decoded, grad_decoder_logvar, grad_z, grad_mu, grad_logvar, grad_gate,
    decoded, x, decoder_logvar, z, mu, logvar, likelihood, gradient, reduction, scale,
) -> None:  # fmt: skip
    """The negative IWAE bound (and its gradients) in one pass per datapoint, one ``_C`` call."""
    grads = (out, grad_decoded, grad_decoder_logvar, grad_z, grad_mu, grad_logvar, grad_gate)
    bad_in, bad_x = _iwae_loss(
        _C.iwae_loss_forward, grads, None, decoded, x, decoder_logvar, z, mu, logvar, likelihood, gradient,
        reduction, scale,
    )  # fmt: skip
    check_counts(likelihood == "bernoulli_probs", bad_in, bad_x, _logits_count(likelihood, decoded))


def iwae_loss_backward(
    grad_decoded, grad_decoder_logvar, grad_z, grad_mu, grad_logvar, grad_gate, grad_out,
    decoded, x, decoder_logvar, z, mu, logvar, likelihood, gradient, reduction, scale,
) -> None:  # fmt: skip
    grads = (grad_decoded, grad_decoder_logvar, grad_z, grad_mu, grad_logvar, grad_gate)
    _iwae_loss(
        _C.iwae_loss_backward, grads, grad_out.contiguous(), decoded, x, decoder_logvar, z, mu, logvar,
        likelihood, gradient, reduction, scale,
    )  # fmt: skip


# --------------------------------------------------------------------------------------
# C++ autograd nodes (optional entries, ops.table's ``native``): the two calls of a step's loss
# lines with their backward in C++, so no Python runs in backward; the ops' own arguments (the
# table's order). Each returns None when the inputs need the general path (a dtype the kernels
# do not take, empty tensors, no _autograd module).
# --------------------------------------------------------------------------------------


def _native_dtypes(*tensors: Tensor | None) -> bool:
    # a loop, not all() over a generator: this runs twice per training step
    dtype = tensors[0].dtype  # type: ignore[union-attr]
    if dtype not in DTYPES:
        return False
    for t in tensors:
        if t is not None and t.dtype != dtype:
            return False
    return True


def autograd_reparameterize(
    mu: Tensor, logvar: Tensor, eps: Tensor | None, seed: Tensor | None, samples: int
) -> Tensor | None:
    """z of eq. (4) as one C++ autograd node (``ops.reparameterize``'s arguments; without seed and
    eps the node draws the seed from torch's default generator)."""
    if _autograd is None or mu.numel() == 0 or not _native_dtypes(mu, logvar, eps):
        return None
    return _autograd.reparameterize(mu, logvar, eps, None if seed is None else int(seed), samples)


def autograd_sgvb_loss(
    decoded: Tensor,
    x: Tensor,
    decoder_logvar: Tensor | None,
    mu: Tensor,
    logvar: Tensor,
    kl_weight: Tensor | None,
    likelihood: str,
    kl_scale: float,
    ll_scale: float,
    with_grad: bool,
) -> Tensor | None:
    """The whole loss of a step as one C++ autograd node (``ops.sgvb_loss``'s arguments); its
    gradients are written in forward and handed out by backward. ``ops.sgvb_loss`` has multiplied
    a ``kl_weight`` into ``kl_scale`` before calling (it is None here)."""
    byte_target = x.dtype == torch.uint8 or x.dtype == torch.bool
    if (
        _autograd is None
        or x.numel() == 0
        or decoded.numel() == 0
        or not _native_dtypes(decoded, mu, logvar, decoder_logvar, None if byte_target else x)
    ):
        return None
    loss, bad_in, bad_x = _autograd.sgvb_loss(
        decoded, x, decoder_logvar, mu, logvar, _C.LIKELIHOODS[likelihood], kl_scale, ll_scale, with_grad
    )
    check_counts(likelihood == "bernoulli_probs", bad_in, bad_x, _logits_count(likelihood, decoded))
    return loss
