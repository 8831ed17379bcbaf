"""The numba backend: the entry points of ``docs/backends.md`` over the jitted CPU kernels.

Each entry point allocates its outputs with torch, hands numpy views of them and of the
(contiguous, CPU) inputs to one kernel of ``kernels`` and raises through
``_errors.check_range`` on the out-of-range counts the kernel returns. Outputs are passed
flat, absent inputs as empty arrays, and scalars with fixed Python types, so each kernel
compiles for at most float32 / float64 x (float or uint8 targets).

numba is imported with this module, which ``fastaevb.backends`` imports on first use.
Compiled kernels are cached on disk (``cache=True``); the first call of a kernel in a fresh
environment compiles it (seconds).
"""

from __future__ import annotations

import threading
from functools import partial

import numba
import numpy as np
import torch
from torch import Tensor

from ..._errors import check_range
from . import kernels as K

DTYPES = (torch.float32, torch.float64)

_REDUCE = {"elements": K.ELEMENTS, "rows": K.ROWS, "total": K.TOTAL}
_EMPTY = {torch.float32: np.empty(0, np.float32), torch.float64: np.empty(0, np.float64)}
_EMPTY_ROWS = {torch.float32: np.empty((0, 0), np.float32), torch.float64: np.empty((0, 0), np.float64)}
_MAX_THREADS = numba.config.NUMBA_NUM_THREADS
_thread_state = threading.local()


def _threads() -> None:
    """Run numba's parallel loops on as many threads as torch uses. numba's setting is per
    calling thread, so remember per thread what was last set (set_num_threads costs microseconds)."""
    wanted = torch.get_num_threads()
    if getattr(_thread_state, "threads", None) != wanted:
        numba.set_num_threads(max(1, min(wanted, _MAX_THREADS)))
        _thread_state.threads = wanted


def _a(t: Tensor) -> np.ndarray:
    """numpy view of a contiguous CPU tensor (no copy)."""
    return (t.detach() if t.requires_grad else t).numpy()


def _flat(t: Tensor) -> np.ndarray:
    """Flat numpy view of a contiguous CPU tensor (numpy's reshape is cheaper than torch's view)."""
    return _a(t).reshape(-1)


def _opt(t: Tensor | None, dtype: torch.dtype) -> tuple[np.ndarray, bool]:
    """Flat view of an optional input and whether it is present (absent: shared empty array)."""
    return (_EMPTY[dtype], False) if t is None else (_flat(t), True)


def _target(x: Tensor, dtype: torch.dtype) -> np.ndarray:
    """Bernoulli targets: uint8 (bool viewed as uint8) or the float type of the input."""
    if x.dtype == torch.bool:
        x = x.view(torch.uint8)
    elif x.dtype != torch.uint8 and x.dtype != dtype:
        x = x.to(dtype)
    return _a(x)


def _reduced(t: Tensor, reduce: str) -> Tensor:
    if reduce == "total":
        return torch.empty((), dtype=t.dtype)
    return torch.empty(t.shape if reduce == "elements" else t.shape[:1], dtype=t.dtype)


def _grad(t: Tensor, with_grad: bool) -> Tensor:
    return torch.empty(t.shape if with_grad else (0,), dtype=t.dtype)


# --- noise ------------------------------------------------------------------------------------


def randn(seed: int, offsets: Tensor) -> Tensor:
    """``tl.randn(seed, offsets)`` elementwise: float32 of the shape of ``offsets``."""
    offsets = offsets.to(torch.int64).contiguous()
    out = torch.empty(offsets.shape, dtype=torch.float32)
    _threads()
    K.randn(_flat(out), _flat(offsets), np.uint64(seed))
    return out


# --- reparameterize + KL ----------------------------------------------------------------------


def reparameterize_kl_forward(
    mu: Tensor, logvar: Tensor, eps: Tensor | None, seed: int, samples: int, log_weights: bool, with_kl: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    rows, latent = mu.shape
    z = torch.empty((samples, rows, latent), dtype=mu.dtype)
    kl = torch.empty((rows,) if with_kl else (0,), dtype=mu.dtype)
    weights_shape = (samples, rows) if log_weights else (0,)
    log_q = torch.empty(weights_shape, dtype=mu.dtype)
    log_p = torch.empty(weights_shape, dtype=mu.dtype)
    eps_a, has_eps = _opt(eps, mu.dtype)
    _threads()
    K.reparameterize_kl_forward(
        _flat(z),
        _a(kl),
        _flat(log_q),
        _flat(log_p),
        _a(mu),
        _a(logvar),
        eps_a,
        has_eps,
        np.uint64(seed),
        int(samples),
        bool(log_weights),
        bool(with_kl),
    )
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
    grad_mu = torch.empty_like(mu)
    grad_logvar = torch.empty_like(logvar)
    dtype = mu.dtype
    _threads()
    K.reparameterize_kl_backward(
        _a(grad_mu),
        _a(grad_logvar),
        *_opt(grad_z, dtype),
        *_opt(grad_kl, dtype),
        *_opt(grad_log_q, dtype),
        *_opt(grad_log_p, dtype),
        _a(mu),
        _a(logvar),
        *_opt(eps, dtype),
        np.uint64(seed),
        int(samples),
    )
    return grad_mu, grad_logvar


# --- analytic KL ------------------------------------------------------------------------------


def gaussian_kl_forward(
    mu: Tensor, logvar: Tensor, reduce: str, scale: float, with_grad: bool
) -> tuple[Tensor, Tensor, Tensor]:
    out = _reduced(mu, reduce)
    grad_mu, grad_logvar = _grad(mu, with_grad), _grad(logvar, with_grad)
    _threads()
    K.gaussian_kl_forward(
        _flat(out),
        _flat(grad_mu),
        _flat(grad_logvar),
        _a(mu),
        _a(logvar),
        _REDUCE[reduce],
        float(scale),
        bool(with_grad),
    )
    return out, grad_mu, grad_logvar


def gaussian_kl_backward(
    grad_out: Tensor, mu: Tensor, logvar: Tensor, reduce: str, scale: float
) -> tuple[Tensor, Tensor]:
    grad_mu, grad_logvar = torch.empty_like(mu), torch.empty_like(logvar)
    _threads()
    K.gaussian_kl_backward(
        _a(grad_mu), _a(grad_logvar), _flat(grad_out), _a(mu), _a(logvar), _REDUCE[reduce], float(scale)
    )
    return grad_mu, grad_logvar


# --- Bernoulli decoder ------------------------------------------------------------------------


def _factor(t: Tensor | None, dtype: torch.dtype) -> tuple[np.ndarray, bool]:
    """A broadcast (R, D) weight as a strided numpy view (no copy), or an empty stand-in."""
    return (_EMPTY_ROWS[dtype], False) if t is None else (_a(t), True)


def _bernoulli_forward(
    probs: bool,
    decoded: Tensor,
    x: Tensor,
    reduce: str,
    scale: float,
    with_grad: bool,
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    target_grad: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(out, grad, grad_x)`` from logits, or from probabilities when ``probs``."""
    out, grad = _reduced(decoded, reduce), _grad(decoded, with_grad)
    grad_x = _grad(decoded, with_grad and target_grad)
    _threads()
    bad_in, bad_x = K.bernoulli_forward(
        _flat(out),
        _flat(grad),
        _flat(grad_x),
        _a(decoded),
        _target(x, decoded.dtype),
        *_factor(weight, decoded.dtype),
        *_factor(pos_weight, decoded.dtype),
        _REDUCE[reduce],
        float(scale),
        bool(with_grad),
        bool(target_grad),
        probs,
    )
    if probs:
        check_range(bad_in, "input")
    check_range(bad_x, "target")
    return out, grad, grad_x


def _bernoulli_backward(
    probs: bool,
    grad_out: Tensor,
    decoded: Tensor,
    x: Tensor,
    reduce: str,
    scale: float,
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    target_grad: bool = False,
) -> tuple[Tensor, Tensor]:
    """``(grad, grad_x)`` from logits, or from probabilities when ``probs``."""
    grad, grad_x = torch.empty_like(decoded), _grad(decoded, target_grad)
    _threads()
    K.bernoulli_backward(
        _a(grad),
        _flat(grad_x),
        _flat(grad_out),
        _a(decoded),
        _target(x, decoded.dtype),
        *_factor(weight, decoded.dtype),
        *_factor(pos_weight, decoded.dtype),
        _REDUCE[reduce],
        float(scale),
        bool(target_grad),
        probs,
    )
    return grad, grad_x


bernoulli_logits_forward = partial(_bernoulli_forward, False)
bernoulli_logits_backward = partial(_bernoulli_backward, False)
bernoulli_probs_forward = partial(_bernoulli_forward, True)
bernoulli_probs_backward = partial(_bernoulli_backward, True)


# --- Gaussian decoder -------------------------------------------------------------------------


def _logvar_2d(logvar: Tensor) -> tuple[np.ndarray, bool]:
    """(R, D) log-variances, or one shared value (shape (1,)) as a (1, 1) array."""
    shared = logvar.dim() == 1
    return _a(logvar.view(1, 1) if shared else logvar), shared


def gaussian_forward(
    x: Tensor, mean: Tensor, logvar: Tensor, reduce: str, scale: float, with_grad: bool
) -> tuple[Tensor, Tensor, Tensor]:
    out = _reduced(mean, reduce)
    grad_mean, grad_logvar = _grad(mean, with_grad), _grad(logvar, with_grad)
    logvar_a, shared = _logvar_2d(logvar)
    _threads()
    K.gaussian_forward(
        _flat(out),
        _flat(grad_mean),
        _flat(grad_logvar),
        _a(x),
        _a(mean),
        logvar_a,
        shared,
        _REDUCE[reduce],
        float(scale),
        bool(with_grad),
    )
    return out, grad_mean, grad_logvar


def gaussian_backward(
    grad_out: Tensor, x: Tensor, mean: Tensor, logvar: Tensor, reduce: str, scale: float
) -> tuple[Tensor, Tensor]:
    grad_mean, grad_logvar = torch.empty_like(mean), torch.empty_like(logvar)
    logvar_a, shared = _logvar_2d(logvar)
    _threads()
    K.gaussian_backward(
        _flat(grad_mean),
        _flat(grad_logvar),
        _flat(grad_out),
        _a(x),
        _a(mean),
        logvar_a,
        shared,
        _REDUCE[reduce],
        float(scale),
    )
    return grad_mean, grad_logvar
