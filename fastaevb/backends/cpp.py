"""C++ / OpenMP CPU backend: the entry points of ``docs/backends.md`` over ``fastaevb._C``.

Each function allocates its outputs with torch, hands raw data pointers, sizes and dtype
codes to the extension (which releases the GIL and runs ``torch.get_num_threads()``
OpenMP threads), and turns the out-of-range counts the kernel returns into
:func:`fastaevb._errors.check_range` errors. No math happens here.

Inputs are assumed contiguous, on the CPU, float32/float64 (``ops.py`` guarantees it);
upstream gradients are made contiguous here because autograd may hand in expanded ones.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from .. import _C
from .._errors import check_range

try:  # the C++ autograd nodes: built when torch was importable at build time (CMakeLists.txt)
    from .. import _autograd  # type: ignore[attr-defined]
except ImportError:
    _autograd = None

DTYPES = (torch.float32, torch.float64)

_DTYPE_CODE = {torch.float32: 0, torch.float64: 1}
_REDUCE_CODE = {"elements": _C.REDUCE_ELEMENTS, "rows": _C.REDUCE_ROWS, "total": _C.REDUCE_TOTAL}
_U64 = (1 << 64) - 1
_num_threads = torch.get_num_threads


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _contig(t: Tensor | None) -> Tensor | None:
    # Keep the result referenced until the kernel returns: its pointer is all _C gets.
    return None if t is None else t.contiguous()


def _reduced(rows: int, reduce: str, like: Tensor) -> Tensor:
    shape = () if reduce == "total" else (rows,)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _grad_slot(like: Tensor, with_grad: bool) -> Tensor:
    return torch.empty_like(like) if with_grad else like.new_empty(0)


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
    mu: Tensor, logvar: Tensor, eps: Tensor | None, seed: int, samples: int, log_weights: bool, with_kl: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    R, J = mu.shape
    z = mu.new_empty((samples, R, J))
    kl = mu.new_empty((R,) if with_kl else (0,))
    weight_shape = (samples, R) if log_weights else (0,)
    log_q = mu.new_empty(weight_shape)
    log_p = mu.new_empty(weight_shape)
    _C.reparameterize_kl_forward(
        z.data_ptr(), kl.data_ptr() if with_kl else 0, log_q.data_ptr(), log_p.data_ptr(),
        mu.data_ptr(), logvar.data_ptr(), _ptr(eps), int(seed) & _U64,
        samples, R, J, bool(log_weights), _DTYPE_CODE[mu.dtype], _num_threads(),
    )  # fmt: skip
    return z, kl, log_q, log_p


def reparameterize_kl_backward(
    grad_z: Tensor | None,
    grad_kl: Tensor | None,
    grad_log_q: Tensor | None,
    grad_log_p: Tensor | None,
    mu: Tensor,
    logvar: Tensor,
    eps: Tensor | None,
    seed: int,
    samples: int,
) -> tuple[Tensor, Tensor]:
    R, J = mu.shape
    grad_z, grad_kl = _contig(grad_z), _contig(grad_kl)
    grad_log_q, grad_log_p = _contig(grad_log_q), _contig(grad_log_p)
    grad_mu = torch.empty_like(mu)
    grad_logvar = torch.empty_like(logvar)
    _C.reparameterize_kl_backward(
        grad_mu.data_ptr(), grad_logvar.data_ptr(),
        _ptr(grad_z), _ptr(grad_kl), _ptr(grad_log_q), _ptr(grad_log_p),
        mu.data_ptr(), logvar.data_ptr(), _ptr(eps), int(seed) & _U64,
        samples, R, J, _DTYPE_CODE[mu.dtype], _num_threads(),
    )  # fmt: skip
    return grad_mu, grad_logvar


# --------------------------------------------------------------------------------------
# Gaussian KL
# --------------------------------------------------------------------------------------


def gaussian_kl_forward(
    mu: Tensor, logvar: Tensor, reduce: str, scale: float, with_grad: bool
) -> tuple[Tensor, Tensor, Tensor]:
    R, J = mu.shape
    out = _reduced(R, reduce, mu)
    grad_mu = _grad_slot(mu, with_grad)
    grad_logvar = _grad_slot(logvar, with_grad)
    _C.gaussian_kl_forward(
        out.data_ptr(), grad_mu.data_ptr(), grad_logvar.data_ptr(), mu.data_ptr(),
        logvar.data_ptr(), R, J, _REDUCE_CODE[reduce], float(scale), bool(with_grad),
        _DTYPE_CODE[mu.dtype], _num_threads(),
    )  # fmt: skip
    return out, grad_mu, grad_logvar


def gaussian_kl_backward(
    grad_out: Tensor, mu: Tensor, logvar: Tensor, reduce: str, scale: float
) -> tuple[Tensor, Tensor]:
    grad_out = grad_out.contiguous()
    R, J = mu.shape
    grad_mu = torch.empty_like(mu)
    grad_logvar = torch.empty_like(logvar)
    _C.gaussian_kl_backward(
        grad_mu.data_ptr(), grad_logvar.data_ptr(), grad_out.data_ptr(), mu.data_ptr(),
        logvar.data_ptr(), R, J, _REDUCE_CODE[reduce], float(scale),
        _DTYPE_CODE[mu.dtype], _num_threads(),
    )  # fmt: skip
    return grad_mu, grad_logvar


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
    return _C.BernoulliExtras(*_factor(weight, width), *_factor(pos_weight, width), grad_x.data_ptr())


def _bernoulli_forward(
    kernel,
    decoded: Tensor,
    x: Tensor,
    reduce: str,
    scale: float,
    with_grad: bool,
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    target_grad: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """``_C.bernoulli_{logits,probs}_forward`` -> ``(out, grad, grad_x)``; raises on the
    out-of-range counts it returns (probabilities and targets, or targets alone for logits)."""
    R, D = decoded.shape
    x, xtype = _target(x, decoded.dtype)
    out = torch.empty_like(decoded) if reduce == "elements" else _reduced(R, reduce, decoded)
    grad = _grad_slot(decoded, with_grad)
    grad_x = _grad_slot(decoded, with_grad and target_grad)
    bad = kernel(
        out.data_ptr(), grad.data_ptr(), decoded.data_ptr(), x.data_ptr(), R, x.shape[0], D,
        _REDUCE_CODE[reduce], float(scale), bool(with_grad), _DTYPE_CODE[decoded.dtype], xtype,
        _num_threads(), _extras(weight, pos_weight, grad_x, D),
    )  # fmt: skip
    bad_in, bad_x = bad if isinstance(bad, tuple) else (0, bad)
    check_range(bad_in, "input")
    check_range(bad_x, "target")
    return out, grad, grad_x


def _bernoulli_backward(
    kernel,
    grad_out: Tensor,
    decoded: Tensor,
    x: Tensor,
    reduce: str,
    scale: float,
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    target_grad: bool = False,
) -> tuple[Tensor, Tensor]:
    """``_C.bernoulli_{logits,probs}_backward`` -> ``(grad, grad_x)``."""
    grad_out = grad_out.contiguous()
    R, D = decoded.shape
    x, xtype = _target(x, decoded.dtype)
    grad = torch.empty_like(decoded)
    grad_x = _grad_slot(decoded, target_grad)
    kernel(
        grad.data_ptr(), grad_out.data_ptr(), decoded.data_ptr(), x.data_ptr(), R, x.shape[0], D,
        _REDUCE_CODE[reduce], float(scale), _DTYPE_CODE[decoded.dtype], xtype, _num_threads(),
        _extras(weight, pos_weight, grad_x, D),
    )  # fmt: skip
    return grad, grad_x


# From logits (Appendix C.1) and from probabilities (exactly -F.binary_cross_entropy): one kernel
# family, the parameterization picked by the _C entry.
bernoulli_logits_forward = partial(_bernoulli_forward, _C.bernoulli_logits_forward)
bernoulli_logits_backward = partial(_bernoulli_backward, _C.bernoulli_logits_backward)
bernoulli_probs_forward = partial(_bernoulli_forward, _C.bernoulli_probs_forward)
bernoulli_probs_backward = partial(_bernoulli_backward, _C.bernoulli_probs_backward)


# --------------------------------------------------------------------------------------
# Gaussian decoder
# --------------------------------------------------------------------------------------


def gaussian_forward(
    x: Tensor, mean: Tensor, logvar: Tensor, reduce: str, scale: float, with_grad: bool
) -> tuple[Tensor, Tensor, Tensor]:
    R, D = mean.shape
    out = _reduced(R, reduce, mean)
    grad_mean = _grad_slot(mean, with_grad)
    grad_logvar = _grad_slot(logvar, with_grad)
    _C.gaussian_forward(
        out.data_ptr(), grad_mean.data_ptr(), grad_logvar.data_ptr(), x.data_ptr(),
        mean.data_ptr(), logvar.data_ptr(), R, x.shape[0], D, logvar.numel() == 1,
        _REDUCE_CODE[reduce], float(scale), bool(with_grad), _DTYPE_CODE[mean.dtype],
        _num_threads(),
    )  # fmt: skip
    return out, grad_mean, grad_logvar


def gaussian_backward(
    grad_out: Tensor, x: Tensor, mean: Tensor, logvar: Tensor, reduce: str, scale: float
) -> tuple[Tensor, Tensor]:
    grad_out = grad_out.contiguous()
    R, D = mean.shape
    grad_mean = torch.empty_like(mean)
    grad_logvar = torch.empty_like(logvar)
    _C.gaussian_backward(
        grad_mean.data_ptr(), grad_logvar.data_ptr(), grad_out.data_ptr(), x.data_ptr(),
        mean.data_ptr(), logvar.data_ptr(), R, x.shape[0], D, logvar.numel() == 1,
        _REDUCE_CODE[reduce], float(scale), _DTYPE_CODE[mean.dtype], _num_threads(),
    )  # fmt: skip
    return grad_mean, grad_logvar


# --------------------------------------------------------------------------------------
# The whole loss of a step (optional fused entry, see docs/backends.md)
# --------------------------------------------------------------------------------------


def sgvb_loss_forward(
    decoded: Tensor,
    x: Tensor,
    decoder_logvar: Tensor | None,
    mu: Tensor,
    logvar: Tensor,
    likelihood: str,
    kl_scale: float,
    ll_scale: float,
    with_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``kl_scale * sum KL - ll_scale * sum log p(x|z)`` and its gradients, one ``_C`` call."""
    R, D = decoded.shape
    gaussian = likelihood == "gaussian"
    x, xtype = (x, 0) if gaussian else _target(x, decoded.dtype)
    out = torch.empty((), dtype=decoded.dtype)
    grad_decoded = _grad_slot(decoded, with_grad)
    grad_decoder_logvar = _grad_slot(decoder_logvar, with_grad) if gaussian else decoded.new_empty(0)
    grad_mu, grad_logvar = _grad_slot(mu, with_grad), _grad_slot(logvar, with_grad)
    bad_in, bad_x = _C.sgvb_loss_forward(
        out.data_ptr(), grad_decoded.data_ptr(), grad_decoder_logvar.data_ptr(), grad_mu.data_ptr(),
        grad_logvar.data_ptr(), decoded.data_ptr(), x.data_ptr(), _ptr(decoder_logvar), mu.data_ptr(),
        logvar.data_ptr(), R, x.shape[0], D, mu.shape[1], _C.LIKELIHOODS[likelihood],
        gaussian and decoder_logvar.numel() == 1, float(kl_scale), float(ll_scale), bool(with_grad),
        _DTYPE_CODE[decoded.dtype], xtype, _num_threads(),
    )  # fmt: skip
    check_range(bad_in, "input")
    check_range(bad_x, "target")
    return out, grad_decoded, grad_decoder_logvar, grad_mu, grad_logvar


# --------------------------------------------------------------------------------------
# C++ autograd nodes (optional entries): the two calls of a step's loss lines with their
# backward in C++, so no Python runs in backward. Each returns None when the inputs need the
# general path (a dtype the kernels do not take, empty tensors, no _autograd module).
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
    mu: Tensor, logvar: Tensor, seed: Tensor | None, eps: Tensor | None, samples: int
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
    likelihood: str,
    kl_scale: float,
    ll_scale: float,
    with_grad: bool,
) -> Tensor | None:
    """The whole loss of a step as one C++ autograd node (``ops.sgvb_loss``'s arguments); its
    gradients are written in forward and handed out by backward."""
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
    check_range(bad_in, "input")
    check_range(bad_x, "target")
    return loss
