"""The numba backend: the entry points of ``docs/backends.md`` over the jitted CPU kernels.

Every entry point takes its outputs first, allocated by the caller (``fastaevb.ops``) with the
right shape and dtype, and writes into them (it returns None). An output that is not wanted is
an empty ``(0,)`` tensor and is skipped: the kernels test ``size > 0``. The entry hands numpy
views of the outputs and of the (contiguous, CPU) inputs to one kernel of ``kernels`` and raises
through ``_errors.check_range`` on the out-of-range counts the kernel returns. Outputs are passed
flat, absent inputs as empty arrays, and scalars with fixed Python types, so each kernel
compiles for at most float32 / float64 x (float or uint8 targets).

numba is imported with this module, which ``fastaevb.backends`` imports on first use.
Compiled kernels are cached on disk (``cache=True``); the first call of a kernel in a fresh
environment compiles it (seconds).
"""

from __future__ import annotations

import threading

import numba
import numpy as np
import torch
from torch import Tensor

from ..._errors import check_range, warn_if_probabilities
from ...ops.table import ERROR_POWERS
from . import kernels as K

DTYPES = (torch.float32, torch.float64)

_REDUCE = {"none": K.NONE, "rows": K.ROWS, "sum": K.SUM}
_EMPTY: dict[torch.dtype, np.ndarray] = {torch.float32: np.empty(0, np.float32), torch.float64: np.empty(0, np.float64)}
_NP_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}
_U64 = (1 << 64) - 1
_MAX_THREADS = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]  # numba sets its config at import
_thread_state = threading.local()


def _threads() -> None:
    """Run numba's parallel loops on as many threads as torch uses. numba's setting is per
    calling thread, so remember per thread what was last set (set_num_threads costs microseconds)."""
    wanted = torch.get_num_threads()
    if getattr(_thread_state, "threads", None) != wanted:
        numba.set_num_threads(max(1, min(wanted, _MAX_THREADS)))
        _thread_state.threads = wanted


def _a(t: Tensor) -> np.ndarray:
    """numpy view of a CPU tensor (no copy)."""
    return (t.detach() if t.requires_grad else t).numpy()


def _flat(t: Tensor) -> np.ndarray:
    """Flat numpy view of a contiguous CPU tensor (numpy's reshape is cheaper than torch's view)."""
    return _a(t).reshape(-1)


def _in(t: Tensor) -> np.ndarray:
    """numpy view of an input that autograd may have handed in expanded (upstream gradients)."""
    return _a(t if t.is_contiguous() else t.contiguous())


def _opt(t: Tensor | None, dtype: torch.dtype) -> tuple[np.ndarray, bool]:
    """Flat view of an optional input and whether it is present (absent: shared empty array)."""
    return (_EMPTY[dtype], False) if t is None else (_in(t).reshape(-1), True)


def _seed(seed) -> np.uint64:
    """The Philox seed (a Python int, or a one-element CPU int64 tensor) as the kernels take it."""
    return np.uint64(int(seed) & _U64)


def _target(x: Tensor, dtype: torch.dtype) -> np.ndarray:
    """Bernoulli targets: uint8 (bool viewed as uint8) or the float type of the input."""
    if x.dtype == torch.bool:
        x = x.view(torch.uint8)
    elif x.dtype != torch.uint8 and x.dtype != dtype:
        x = x.to(dtype)
    return _in(x)


def _float_input(x: Tensor, dtype: torch.dtype) -> np.ndarray:
    return _in(x if x.dtype == dtype else x.to(dtype))


def _factor(t: Tensor | None, dtype: torch.dtype) -> tuple[np.ndarray, int, int, bool]:
    """A broadcast (R, D) weight as its memory, a 1-D view from its first element (no copy), and
    its row and column strides; an empty stand-in when absent. Every layout (one value, per row,
    per column, the input's shape) is then one numba type, so the kernel compiles once for all of
    them, not once per layout (each a parallel kernel's tens of seconds)."""
    if t is None:
        return _EMPTY[dtype], 0, 0, False
    t = t if t.dtype == dtype else t.to(dtype)
    rows, cols = t.shape
    row_stride, col_stride = t.stride()
    span = (rows - 1) * row_stride + (cols - 1) * col_stride + 1 if rows and cols else 0
    return _a(t.as_strided((span,), (1,))), row_stride, col_stride, True


# --- noise ------------------------------------------------------------------------------------


def randn(seed: int, offsets: Tensor) -> Tensor:
    """``tl.randn(seed, offsets)`` elementwise: float32 of the shape of ``offsets``."""
    offsets = offsets.to(torch.int64).contiguous()
    out = torch.empty(offsets.shape, dtype=torch.float32)
    _threads()
    K.randn(_flat(out), _flat(offsets), _seed(seed))
    return out


def randn_flat_(out: Tensor, seed) -> None:
    """Not an entry point (the ``torch`` backend's noise on the CPU): ``out.view(-1)[i] =
    tl.randn(seed, i)`` for a contiguous float32 / float64 CPU tensor ``out``, widened to its dtype."""
    _threads()
    K.randn_flat(_flat(out), _seed(seed))


def _draw(seed, n: int, like: Tensor) -> Tensor:
    eps = torch.empty(n, dtype=like.dtype)
    randn_flat_(eps, seed)
    return eps


def _eps(eps: Tensor | None, seed, n: int, like: Tensor) -> Tensor | None:
    """The given eps, or the Philox draw of ``seed`` (one parallel pass; forward and backward each
    draw it: eps is never stored)."""
    if eps is not None or n == 0:
        return eps
    return _draw(seed, n, like)


# --- reparameterize + KL ----------------------------------------------------------------------


def reparameterize_kl_forward(
    z: Tensor,
    kl: Tensor,
    log_q: Tensor,
    log_p: Tensor,
    mu: Tensor,
    logvar: Tensor,
    eps: Tensor | None,
    seed,
    samples: int,
) -> None:
    """z (samples, R, J); kl (R,) or (0,); log_q, log_p (samples, R) or (0,)."""
    eps_a, has_eps = _opt(_eps(eps, seed, z.numel(), mu), mu.dtype)
    _threads()
    K.reparameterize_kl_forward(
        _flat(z), _flat(kl), _flat(log_q), _flat(log_p), _a(mu), _a(logvar), eps_a, has_eps, _seed(seed), int(samples)
    )


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
    seed,
    samples: int,
) -> None:
    dtype = mu.dtype
    if grad_z is not None or grad_log_p is not None:  # only then does backward read eps
        eps = _eps(eps, seed, int(samples) * mu.numel(), mu)
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
        *_opt(None if eps is None else eps.reshape(-1), dtype),
        _seed(seed),
        int(samples),
    )


# --- analytic KL ------------------------------------------------------------------------------


def gaussian_kl_forward(
    out: Tensor, grad_mu: Tensor, grad_logvar: Tensor, mu: Tensor, logvar: Tensor, reduction: str, scale: float
) -> None:
    """out (R,) for 'rows', 0-d for 'sum'; grad_mu, grad_logvar (R, J) or (0,)."""
    _threads()
    K.gaussian_kl_forward(
        _flat(out), _flat(grad_mu), _flat(grad_logvar), _a(mu), _a(logvar), _REDUCE[reduction], float(scale)
    )


def gaussian_kl_backward(
    grad_mu: Tensor, grad_logvar: Tensor, grad_out: Tensor, mu: Tensor, logvar: Tensor, reduction: str, scale: float
) -> None:
    _threads()
    K.gaussian_kl_backward(
        _a(grad_mu), _a(grad_logvar), _in(grad_out).reshape(-1), _a(mu), _a(logvar), _REDUCE[reduction], float(scale)
    )


# --- Bernoulli decoder ------------------------------------------------------------------------


def bernoulli_log_likelihood_forward(
    out: Tensor,
    grad_logits: Tensor,
    grad_x: Tensor,
    logits: Tensor,
    x: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: str,
    scale: float,
) -> None:
    """From logits: out (R, D) 'none' / (R,) 'rows' / 0-d 'sum'; grad_logits, grad_x (R, D) or (0,)."""
    dtype = logits.dtype
    _threads()
    if weight is None and pos_weight is None:
        _, bad_x = K.bernoulli_logits_forward(
            _flat(out),
            _flat(grad_logits),
            _flat(grad_x),
            _a(logits),
            _target(x, dtype),
            _REDUCE[reduction],
            float(scale),
        )
        check_range(bad_x, "target")
        return
    _, bad_x = K.bernoulli_forward(
        _flat(out),
        _flat(grad_logits),
        _flat(grad_x),
        _a(logits),
        _target(x, dtype),
        *_factor(weight, dtype),
        *_factor(pos_weight, dtype),
        _REDUCE[reduction],
        float(scale),
        False,
    )
    check_range(bad_x, "target")


def bernoulli_log_likelihood_backward(
    grad_logits: Tensor,
    grad_x: Tensor,
    grad_out: Tensor,
    logits: Tensor,
    x: Tensor,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: str,
    scale: float,
) -> None:
    dtype = logits.dtype
    _threads()
    K.bernoulli_backward(
        _a(grad_logits),
        _flat(grad_x),
        _in(grad_out).reshape(-1),
        _a(logits),
        _target(x, dtype),
        *_factor(weight, dtype),
        *_factor(pos_weight, dtype),
        _REDUCE[reduction],
        float(scale),
        False,
    )


def bernoulli_probs_log_likelihood_forward(
    out: Tensor,
    grad_probs: Tensor,
    grad_x: Tensor,
    probs: Tensor,
    x: Tensor,
    weight: Tensor | None,
    reduction: str,
    scale: float,
) -> None:
    """From probabilities (exactly ``-F.binary_cross_entropy``); shapes as from logits."""
    dtype = probs.dtype
    _threads()
    bad_in, bad_x = K.bernoulli_forward(
        _flat(out),
        _flat(grad_probs),
        _flat(grad_x),
        _a(probs),
        _target(x, dtype),
        *_factor(weight, dtype),
        *_factor(None, dtype),
        _REDUCE[reduction],
        float(scale),
        True,
    )
    check_range(bad_in, "input")
    check_range(bad_x, "target")


def bernoulli_probs_log_likelihood_backward(
    grad_probs: Tensor,
    grad_x: Tensor,
    grad_out: Tensor,
    probs: Tensor,
    x: Tensor,
    weight: Tensor | None,
    reduction: str,
    scale: float,
) -> None:
    dtype = probs.dtype
    _threads()
    K.bernoulli_backward(
        _a(grad_probs),
        _flat(grad_x),
        _in(grad_out).reshape(-1),
        _a(probs),
        _target(x, dtype),
        *_factor(weight, dtype),
        *_factor(None, dtype),
        _REDUCE[reduction],
        float(scale),
        True,
    )


# --- location-scale decoders: Gaussian and error (squared / absolute) --------------------------
# One kernel pair for both ops (``kernels.location_scale_*``): ``form`` GAUSSIAN or the error's power.

# The form of each decoder with a second parameter (decoder_logvar) of sgvb_loss.
_FORMS = {"gaussian": K.GAUSSIAN, **ERROR_POWERS}


def _logvar_2d(logvar: Tensor) -> tuple[np.ndarray, bool]:
    """(R, D) log-variances (or error log-scales), or one shared value (shape (1,)) as a (1, 1) array."""
    shared = logvar.dim() == 1
    return _a(logvar.view(1, 1) if shared else logvar), shared


def _location_scale_forward(out_a, grad_mean, grad_log_scale, x, mean, log_scale, reduce, scale, form) -> None:
    """``out_a``: the flat numpy output (``sgvb_loss_forward`` passes its slot of the two totals)."""
    log_scale_a, shared = _logvar_2d(log_scale)
    K.location_scale_forward(
        out_a,
        _flat(grad_mean),
        _flat(grad_log_scale),
        _float_input(x, mean.dtype),
        _a(mean),
        log_scale_a,
        shared,
        reduce,
        float(scale),
        form,
    )


def _location_scale_backward(grad_mean, grad_log_scale, grad_out, x, mean, log_scale, reduction, scale, form):
    log_scale_a, shared = _logvar_2d(log_scale)
    K.location_scale_backward(
        _flat(grad_mean),
        _flat(grad_log_scale),
        _in(grad_out).reshape(-1),
        _float_input(x, mean.dtype),
        _a(mean),
        log_scale_a,
        shared,
        _REDUCE[reduction],
        float(scale),
        form,
    )


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
    """out (R,) 'rows' / 0-d 'sum'; grad_mean (R, D) or (0,); grad_logvar like logvar ((R, D) or
    (1,) shared) or (0,)."""
    _threads()
    _location_scale_forward(_flat(out), grad_mean, grad_logvar, x, mean, logvar, _REDUCE[reduction], scale, K.GAUSSIAN)


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
    _threads()
    _location_scale_backward(grad_mean, grad_logvar, grad_out, x, mean, logvar, reduction, scale, K.GAUSSIAN)


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
    """As the Gaussian's, the log-scale in place of the log-variance; ``power`` 2 (squared error)
    or 1 (absolute error)."""
    _threads()
    _location_scale_forward(
        _flat(out), grad_mean, grad_log_scale, x, mean, log_scale, _REDUCE[reduction], scale, int(power)
    )


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
    _threads()
    _location_scale_backward(grad_mean, grad_log_scale, grad_out, x, mean, log_scale, reduction, scale, int(power))


# --- the whole loss of a step (optional fused entry) -------------------------------------------


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
    """out 0-d = ``kl_scale * sum_r KL_r - ll_scale * sum_r log p(x_r | z_r)``; the gradients
    (each given or (0,)) of that total. The KL kernel and the decoder kernel run back to back,
    the two totals (each rounded to the value dtype, as the C++ entry) added in float64."""
    dtype = decoded.dtype
    total = np.empty(2, _NP_DTYPE[dtype])
    _threads()
    K.gaussian_kl_forward(total[0:1], _flat(grad_mu), _flat(grad_logvar), _a(mu), _a(logvar), K.SUM, float(kl_scale))
    bad_in = bad_x = 0
    if likelihood in _FORMS:  # a decoder with a second parameter: the log-variance or log-scale
        assert decoder_logvar is not None  # zeros(1) when none is learned
        _location_scale_forward(
            total[1:2],
            grad_decoded,
            grad_decoder_logvar,
            x,
            decoded,
            decoder_logvar,
            K.SUM,
            -float(ll_scale),
            _FORMS[likelihood],
        )
    elif likelihood == "bernoulli":
        outside, bad_x = K.bernoulli_logits_forward(
            total[1:2], _flat(grad_decoded), _EMPTY[dtype], _a(decoded), _target(x, dtype), K.SUM, -float(ll_scale)
        )
        warn_if_probabilities(outside, decoded.numel())
    else:
        probs = likelihood == "bernoulli_probs"
        if not probs:
            raise ValueError(f"unknown likelihood {likelihood!r}")
        bad_in, bad_x = K.bernoulli_forward(
            total[1:2],
            _flat(grad_decoded),
            _EMPTY[dtype],
            _a(decoded),
            _target(x, dtype),
            *_factor(None, dtype),
            *_factor(None, dtype),
            K.SUM,
            -float(ll_scale),
            probs,
        )
    check_range(bad_in, "input")
    check_range(bad_x, "target")
    _flat(out)[0] = float(total[0]) + float(total[1])


# --- the importance-weighted bound (optional fused entries) -----------------------------------


def _iwae_loss(grads, grad_out, decoded, x, decoder_logvar, z, mu, logvar, likelihood, gradient, reduction, scale):
    """One pass per datapoint (``K.iwae_loss``): its K decoder rows, the log weights, their
    log-sum-exp and every gradient. Returns the bounds (B,) float64."""
    grad_decoded, grad_decoder_logvar, grad_z, grad_mu, grad_logvar, grad_gate = grads
    dtype = decoded.dtype
    _threads()
    wanted = grad_decoded.numel() > 0
    if likelihood in _FORMS:
        family, form = K.LOCATION_SCALE, _FORMS[likelihood]
        log_scale, shared = _logvar_2d(decoder_logvar)
        target = _float_input(x, dtype)
    else:
        family, form = (K.LOGITS if likelihood == "bernoulli" else K.PROBS), 0
        log_scale, shared = np.empty((0, 0), _NP_DTYPE[dtype]), False
        target = _target(x, dtype)
    batch = mu.shape[0]
    bounds = np.empty(batch, np.float64)
    shared_grads = np.empty(batch if shared and wanted and grad_decoder_logvar.numel() else 0, np.float64)
    per_element = wanted and not shared and family == K.LOCATION_SCALE
    bad_in, bad_x, outside = K.iwae_loss(
        bounds, shared_grads, _flat(grad_decoded) if wanted else _EMPTY[dtype],
        _flat(grad_decoder_logvar) if per_element else _EMPTY[dtype], _flat(grad_z), _flat(grad_mu),
        _flat(grad_logvar), _flat(grad_gate), _a(decoded), target, log_scale, _a(z), _a(mu), _a(logvar),
        np.ones(1, _NP_DTYPE[dtype]) if grad_out is None else _in(grad_out).reshape(-1),
        grad_out is not None and reduction == "rows", float(scale), family, form, shared,
    )  # fmt: skip
    if family == K.LOGITS:
        warn_if_probabilities(outside, decoded.numel())
    check_range(bad_in, "input")
    check_range(bad_x, "target")
    if shared_grads.size:  # float64
        _flat(grad_decoder_logvar)[0] = float(shared_grads.sum())
    return bounds


def iwae_loss_forward(
    out, grad_decoded, grad_decoder_logvar, grad_z, grad_mu, grad_logvar, grad_gate,
    decoded, x, decoder_logvar, z, mu, logvar, likelihood, gradient, reduction, scale,
) -> None:  # fmt: skip
    """out (B,) 'rows' / 0-d 'sum' = ``-scale (logsumexp_k log w_k - log K)``; the gradients (each
    given or (0,)) of the scaled total, in the same call."""
    grads = (grad_decoded, grad_decoder_logvar, grad_z, grad_mu, grad_logvar, grad_gate)
    bounds = _iwae_loss(grads, None, decoded, x, decoder_logvar, z, mu, logvar, likelihood, gradient, reduction, scale)
    if reduction == "rows":
        _flat(out)[:] = -float(scale) * bounds
    else:  # in datapoint order, float64
        _flat(out)[0] = -float(scale) * float(bounds.sum())


def iwae_loss_backward(
    grad_decoded, grad_decoder_logvar, grad_z, grad_mu, grad_logvar, grad_gate, grad_out,
    decoded, x, decoder_logvar, z, mu, logvar, likelihood, gradient, reduction, scale,
) -> None:  # fmt: skip
    grads = (grad_decoded, grad_decoder_logvar, grad_z, grad_mu, grad_logvar, grad_gate)
    _iwae_loss(grads, grad_out, decoded, x, decoder_logvar, z, mu, logvar, likelihood, gradient, reduction, scale)
