"""The ``torch`` backend: the entry points of ``docs/backends.md`` in plain torch ops, for any device.

It computes values *and* gradients in forward, as the kernel backends do, with as few passes over
memory as the eager code a user writes: each entry writes into the outputs it is given
(``out=``, in-place ops), reuses a given gradient as its scratch row buffer, and shares one
transcendental pass between the value and the gradient where the math allows it. It is not
``fastaevb.reference`` (the float64 ground truth of the tests, whose gradients come from
autograd): the formulas are those of ``docs/math.md``, rearranged for few passes:

- Bernoulli from logits: ``-ll = softplus(l) - x l`` (one softplus pass, one fused multiply-add
  pass), gradient ``x - sigmoid(l)`` (one sigmoid pass, one subtraction). Softplus switches to
  ``l`` above a threshold at which ``log1p(exp(-l))`` is below half an ulp of ``l`` (20 for float32,
  40 for float64), so it is exact to rounding in both dtypes.
- Bernoulli from probabilities: torch's own ``binary_cross_entropy`` kernels (the definition of
  the op) when the range check has shown every value in [0, 1] (they raise on NaN, which must
  give NaN here instead); the formula with NaN-propagating clamps otherwise.
- Row sums accumulate in the input dtype (torch's cascade sums), 'sum' combines them in float64;
  the shared Gaussian log-variance sums squares in float64, as the kernels do (and the shared
  error log-scale its errors).

Range checks (``fastaevb._errors.check_range``) cost one ``aminmax`` pass per checked tensor
(the exact count only when it fails), and read the result on the host (a sync on CUDA).

Noise: ``eps[i] = tl.randn(seed, i)`` (docs/noise.md). On the CPU with numba installed the numba
backend's Philox kernel fills eps (one parallel pass); otherwise Philox4x32-10 runs here on int64
tensors (:func:`randn`), on the tensors' device. As on every backend eps is regenerated in
backward, never stored (the pure-torch Philox costs ~100 tensor ops per draw).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from .. import _torch_private as private
from .._errors import check_range
from ..ops.table import ERROR_POWERS

DTYPES = (torch.float32, torch.float64)

LOG_2PI = math.log(2.0 * math.pi)
# ATen's binary_cross_entropy_backward clamps with `constexpr float EPSILON = 1e-12`: float32 1e-12.
_BCE_EPSILON = float(torch.tensor(1e-12, dtype=torch.float32))
# softplus(l) = l above this: log1p(exp(-l)) < ulp(l) / 2 there (exp(-20) / 20 ~ 1e-10 < 2^-25,
# exp(-40) / 40 ~ 1e-19 < 2^-54).
_SOFTPLUS_THRESHOLD = {torch.float32: 20.0, torch.float64: 40.0}


# --- helpers ------------------------------------------------------------------------------------


def _entry(func):
    """An entry point runs outside autograd (the op layer calls it from an autograd.Function's
    forward, where grad mode is off already; ``out=`` ops refuse inputs that require grad)."""

    @functools.wraps(func)
    def run(*args):
        if torch.is_grad_enabled():
            with torch.no_grad():
                return func(*args)
        return func(*args)

    return run


def _wanted(t: Tensor) -> bool:
    return t.numel() > 0


def _write_rows(out: Tensor | list, rows: Tensor, reduction: str, scale: float) -> None:
    """``out = scale * rows`` ('rows', out (R,)) or ``scale * sum_r rows[r]``, combined in float64
    ('sum'; ``out`` may be a list, which gets the float64 total: ``sgvb_loss_forward`` adds two)."""
    if reduction == "rows":
        torch.mul(rows, scale, out=out)  # type: ignore[arg-type]  # a Tensor for 'rows'
        return
    total = rows.sum(dtype=torch.float64)
    if isinstance(out, list):
        out.append(total.mul_(scale))
    elif out.device.type == "cpu":  # reading the value costs no sync here, and two ops less
        out.fill_(total.item() * scale)
    else:
        out.copy_(total.mul_(scale))


def _upstream(grad_out: Tensor, reduction: str, scale: float) -> Tensor:
    """``scale * grad_out`` shaped to broadcast over (R, D): (R, D) 'none', (R, 1) 'rows', 0-d 'sum'."""
    if reduction == "rows":
        grad_out = grad_out.reshape(-1, 1)
    elif reduction == "sum":
        grad_out = grad_out.reshape(())
    return grad_out * scale


def _samples_view(t: Tensor, batch: int) -> Tensor:
    """(R, D) rows as (L, B, D), so a (B, D) data tensor broadcasts over the L samples (row r reads r % B)."""
    rows = t.shape[0]
    return t if rows == batch else t.view(rows // batch, batch, *t.shape[1:])


def _check_unit(t: Tensor, name: str) -> bool:
    """Raise (``check_range``) if values of ``t`` lie outside [0, 1] (NaN is not flagged; uint8 /
    bool: values > 1). One ``aminmax`` pass; the exact count (three more passes) only when some
    value is outside or NaN. Returns whether every value is in [0, 1] and none is NaN."""
    if t.numel() == 0 or t.dtype == torch.bool:
        return True
    if t.dtype == torch.uint8:
        if t.max().item() > 1:
            check_range(int((t > 1).sum()), name)
        return True
    lo, hi = torch.aminmax(t)
    if lo.item() >= 0 and hi.item() <= 1:  # False for NaN too: then count, NaN excluded
        return True
    check_range(int(((t < 0) | (t > 1)).sum()), name)
    return False


def _float_target(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x if x.dtype == dtype else x.to(dtype)


def _value_buffer(out: Tensor, grad: Tensor, like: Tensor, reduction: str) -> Tensor:
    """Where the elementwise values go before they are reduced: ``out`` itself ('none'), else a
    wanted gradient (overwritten afterwards), else scratch."""
    if reduction == "none":
        return out
    return grad if _wanted(grad) else torch.empty_like(like)


# --- noise: Philox4x32-10, Triton's tl.randn ---------------------------------------------------

_M32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57  # round multipliers
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85  # Weyl increments of the key
_INT32_TO_UNIT = 4.6566127342e-10  # uint_to_uniform_float (taken as float32 in the product)
_U1_MIN = 1.0e-7
_TWO_PI = 6.283185307179586


def _round_keys(seed) -> list[tuple]:
    """The ten round keys (k0, k1): Python ints for an int seed, 0-d int64 tensors for a tensor one
    (a seed drawn on a CUDA device stays there)."""
    k0: Any
    k1: Any
    if isinstance(seed, Tensor):
        s = seed.reshape(()).to(torch.int64)
        k0, k1 = s & _M32, (s >> 32) & _M32
    else:
        v = int(seed) & _U64
        k0, k1 = v & _M32, v >> 32
    keys = []
    for _ in range(10):
        keys.append((k0, k1))
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    return keys


def _hi(p: Tensor) -> Tensor:
    """High 32 bits of the 64-bit product ``p`` (an int64 that may have wrapped negative)."""
    return torch.bitwise_right_shift(p, 32).bitwise_and_(_M32)


def _philox_words(keys: list[tuple], c0: Tensor, c1) -> tuple[Tensor, Tensor]:
    """The first two output words of Philox4x32-10 on counters (c0, c1, 0, 0): ``c0`` an int64 tensor
    of 32-bit values (consumed), ``c1`` one too or a Python int. Products of two 32-bit values wrap
    in int64 arithmetic; only their low 64 bits are used, split into the two 32-bit halves."""
    # Round 1 with c2 = c3 = 0: the c2 product is 0.
    k0, k1 = keys[0]
    pa = c0.mul_(_ROUND_A)
    c2 = _hi(pa).bitwise_xor_(k1)
    c3 = pa.bitwise_and_(_M32)
    c0 = c1 ^ k0  # a Python int when c1 is one (every offset below 2^32)
    # Round 2 with c1 = 0.
    k0, k1 = keys[1]
    pb = c2.mul_(_ROUND_B)
    pa = c0 * _ROUND_A
    c2 = c3.bitwise_xor_(_hi(pa) if isinstance(pa, Tensor) else (pa >> 32))
    c2 = c2.bitwise_xor_(k1)
    c3 = pa & _M32
    c0 = _hi(pb).bitwise_xor_(k0)
    c1 = pb.bitwise_and_(_M32)
    for r in range(2, 10):
        k0, k1 = keys[r]
        pa = c0.mul_(_ROUND_A)
        pb = c2.mul_(_ROUND_B)
        n0 = _hi(pb).bitwise_xor_(c1).bitwise_xor_(k0)
        c1 = pb.bitwise_and_(_M32)
        if r == 9:
            return n0, c1
        c2 = _hi(pa).bitwise_xor_(c3).bitwise_xor_(k1)
        c3 = pa.bitwise_and_(_M32)
        c0 = n0
    raise AssertionError("unreachable")


def _uniform(word: Tensor) -> Tensor:
    """``uint_to_uniform_float``: the word as int32, negatives folded with ``~x``, times 2^-31 in float32."""
    folded = word.bitwise_xor_(torch.bitwise_right_shift(word, 31).mul_(_M32))
    return folded.to(torch.float32).mul_(torch.tensor(_INT32_TO_UNIT, dtype=torch.float32, device=word.device))


def _normal(w0: Tensor, w1: Tensor) -> Tensor:
    """The first Box-Muller output ``sqrt(-2 log max(u1, 1e-7)) * cos(2 pi u2)``, float32."""
    u1, u2 = _uniform(w0), _uniform(w1)
    r = u1.clamp_min_(_U1_MIN).log_().mul_(-2.0).sqrt_()
    th = u2.mul_(torch.tensor(_TWO_PI, dtype=torch.float32, device=u2.device)).cos_()
    return r.mul_(th)


@_entry
def randn(seed, offsets: Tensor) -> Tensor:
    """``triton.language.randn(seed, offsets)`` in torch ops: float32 of the shape of ``offsets``,
    on its device. ``seed``: a Python int in [0, 2^63), or a one-element int64 tensor."""
    off = offsets.to(torch.int64).reshape(-1)
    if off.numel() == 0:
        return torch.empty(offsets.shape, dtype=torch.float32, device=offsets.device)
    c1 = torch.bitwise_right_shift(off, 32).bitwise_and_(_M32)
    c0 = off.bitwise_and(_M32)
    return _normal(*_philox_words(_round_keys(seed), c0, c1)).view(offsets.shape)


def _philox_flat(seed, n: int, device: torch.device) -> Tensor:
    """``randn(seed, arange(n))`` without materializing the high counter word (0 below 2^32)."""
    if n >= 1 << 32:
        return randn(seed, torch.arange(n, device=device))
    c0 = torch.arange(n, dtype=torch.int64, device=device)
    return _normal(*_philox_words(_round_keys(seed), c0, 0))


_numba_noise: Any = None  # the numba backend's randn_flat_, looked up on first use (False: unavailable)
use_compiled_noise = True  # tests and benchmarks set False to run the pure-torch Philox on the CPU


def _compiled_fill():
    global _numba_noise
    if _numba_noise is None:
        try:
            from .numba import randn_flat_
        except ImportError:
            _numba_noise = False
        else:
            _numba_noise = randn_flat_
    return _numba_noise


def _generate(seed, n: int, like: Tensor) -> Tensor:
    if like.device.type == "cpu" and use_compiled_noise and not isinstance(seed, Tensor):
        fill = _compiled_fill()
        if fill:
            eps = torch.empty(n, dtype=like.dtype)
            fill(eps, seed)
            return eps
    eps = _philox_flat(seed, n, like.device)
    return eps if eps.dtype == like.dtype else eps.to(like.dtype)


def _noise(seed, n: int, like: Tensor, generate=None) -> Tensor:
    """Flat eps of ``n`` draws in ``like``'s dtype and device (``generate(seed, n, like)``, default
    :func:`_generate`), regenerated in backward as on every backend: eps is never stored."""
    return (generate or _generate)(seed if isinstance(seed, Tensor) else int(seed), n, like)


# --- reparameterize + KL ---------------------------------------------------------------------------


@_entry
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
    """z (samples, R, J) = mu + exp(0.5 v) eps; kl (R,) or (0,); log_q, log_p (samples, R) or (0,)."""
    if _wanted(kl):
        t = torch.expm1(logvar).sub_(logvar).addcmul_(mu, mu)  # mu^2 + expm1(v) - v
        torch.sum(t, 1, out=kl)
        kl.mul_(0.5)
    if z.numel() == 0:
        return
    log_weights = _wanted(log_q)
    if eps is None:
        eps = _noise(seed, z.numel(), mu).view(z.shape)
    sd = torch.mul(logvar, 0.5).exp_()
    torch.addcmul(mu, sd, eps, out=z)
    if log_weights:
        J = mu.shape[1]
        torch.sum(eps.square().add_(logvar), -1, out=log_q)  # sum_j (v + eps^2)
        log_q.add_(J * LOG_2PI).mul_(-0.5)
        torch.sum(z.square(), -1, out=log_p)
        log_p.add_(J * LOG_2PI).mul_(-0.5)


@_entry
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
    """g_l = grad_z[l] - grad_log_p[l] z_l; grad_mu = sum_l g_l + grad_kl mu;
    grad_logvar = 0.5 exp(0.5 v) sum_l g_l eps_l - 0.5 sum_l grad_log_q[l] + 0.5 grad_kl expm1(v)."""
    if grad_mu.numel() == 0:
        return
    L = samples
    if (grad_z is not None or grad_log_p is not None) and L > 0:
        shape = (L, *mu.shape)
        if eps is None:
            eps = _noise(seed, L * mu.numel(), mu).view(shape)
        half_sd = torch.mul(logvar, 0.5).exp_()
        if grad_log_p is not None:
            z = torch.addcmul(mu, half_sd, eps)
            g = z.mul_(grad_log_p.unsqueeze(-1)).neg_()
            if grad_z is not None:
                g.add_(grad_z)
        else:
            g = grad_z  # type: ignore[assignment]  # not None: the caller only asks with some upstream gradient
        half_sd.mul_(0.5)
        if L == 1:
            grad_mu.copy_(g[0])
            torch.mul(g[0], eps[0], out=grad_logvar)
        else:
            torch.sum(g, 0, out=grad_mu)
            torch.sum(g * eps, 0, out=grad_logvar)
        grad_logvar.mul_(half_sd)
    else:
        grad_mu.zero_()
        grad_logvar.zero_()
    if grad_log_q is not None:
        grad_logvar.sub_(grad_log_q.sum(0).unsqueeze(1), alpha=0.5)
    if grad_kl is not None:
        gk = grad_kl.unsqueeze(1)
        grad_mu.addcmul_(gk, mu)
        grad_logvar.addcmul_(gk, torch.expm1(logvar), value=0.5)


# --- analytic KL -----------------------------------------------------------------------------------


@_entry
def gaussian_kl_forward(
    out: Tensor, grad_mu: Tensor, grad_logvar: Tensor, mu: Tensor, logvar: Tensor, reduction: str, scale: float
) -> None:
    """scale * 0.5 sum_j (mu^2 + expm1(v) - v) per row ('rows') or in total ('sum'); gradients
    scale * mu and scale * 0.5 expm1(v), each when wanted."""
    em1 = torch.expm1(logvar, out=grad_logvar) if _wanted(grad_logvar) else torch.expm1(logvar)
    rows = torch.sub(em1, logvar).addcmul_(mu, mu).sum(1)
    _write_rows(out, rows, reduction, 0.5 * scale)
    if _wanted(grad_mu):
        torch.mul(mu, scale, out=grad_mu)
    if _wanted(grad_logvar):
        em1.mul_(0.5 * scale)


@_entry
def gaussian_kl_backward(
    grad_mu: Tensor, grad_logvar: Tensor, grad_out: Tensor, mu: Tensor, logvar: Tensor, reduction: str, scale: float
) -> None:
    w = _upstream(grad_out, reduction, scale)
    torch.mul(mu, w, out=grad_mu)
    torch.expm1(logvar, out=grad_logvar).mul_(w).mul_(0.5)


# --- Bernoulli decoder from logits -----------------------------------------------------------------


def _logits_plain_forward(
    out: Tensor, grad: Tensor, grad_x: Tensor, l: Tensor, x: Tensor, weight: Tensor | None, reduction: str, scale: float
) -> None:
    """Without pos_weight. ``l`` is (L, B, D) or (B, D), ``x`` (B, D) float, ``weight`` like ``l`` or None;
    ``out`` / ``grad`` / ``grad_x`` viewed like ``l`` where they are (R, D)."""
    buf = _value_buffer(out, grad, l, reduction)
    private.softplus_out(l, 1.0, _SOFTPLUS_THRESHOLD[l.dtype], out=buf)  # type: ignore[call-arg]  # stub lacks out=
    buf.addcmul_(x, l, value=-1.0)  # -ll = softplus(l) - x l
    if weight is not None:
        buf.mul_(weight)
    if reduction == "none":
        buf.mul_(-scale)
    else:
        _write_rows(out, buf.sum(-1).reshape(-1), reduction, -scale)
    if _wanted(grad):
        torch.sigmoid(l, out=grad).sub_(x)  # -dll/dl = sigmoid(l) - x
        if weight is not None:
            grad.mul_(weight)
        if scale != -1.0:
            grad.mul_(-scale)
    if _wanted(grad_x):  # dll/dx = l
        torch.mul(l, scale, out=grad_x)
        if weight is not None:
            grad_x.mul_(weight)


def _logits_pos_weight_terms(l: Tensor, x: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """torch's pos-weighted form: ``(ll, softplus(-l))`` with ``ll = -(1 + (q - 1) x) softplus(-l) - (1 - x) l``."""
    sp_neg = private.softplus_out(-l, 1.0, _SOFTPLUS_THRESHOLD[l.dtype])  # -logsigmoid(l)
    log_weight = torch.addcmul(torch.ones_like(sp_neg), q - 1.0, x)
    ll = torch.mul(log_weight, sp_neg).neg_().sub_((1.0 - x) * l)
    return ll, sp_neg


def _logits_pos_weight_forward(
    out: Tensor,
    grad: Tensor,
    grad_x: Tensor,
    l: Tensor,
    x: Tensor,
    weight: Tensor | None,
    q: Tensor,
    reduction: str,
    scale: float,
) -> None:
    """``ll = (1 + (q - 1) x) logsig(l) - (1 - x) l``; ``dll/dl = q x - (q x + 1 - x) sigmoid(l)``;
    ``dll/dx = q logsig(l) - logsig(-l) = (1 - q) softplus(-l) + l``."""
    ll, sp_neg = _logits_pos_weight_terms(l, x, q)
    w = scale if weight is None else weight * scale
    if reduction == "none":
        torch.mul(ll, w, out=out)
    else:
        if weight is not None:
            ll.mul_(weight)
        _write_rows(out, ll.sum(-1).reshape(-1), reduction, scale)
    if _wanted(grad):
        torch.mul(_logits_pos_weight_grad(l, x, q), w, out=grad)
    if _wanted(grad_x):
        torch.mul(torch.mul(sp_neg, 1.0 - q).add_(l), w, out=grad_x)


def _logits_pos_weight_grad(l: Tensor, x: Tensor, q: Tensor) -> Tensor:
    qx = q * x
    return qx - (qx + 1.0 - x) * torch.sigmoid(l)


@_entry
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
    """From logits: scale * sum (x l - softplus(l)) per element ('none', out (R, D)), row ('rows',
    (R,)) or in total ('sum', 0-d); gradients scale * (x - sigmoid(l)) and scale * l (times the
    weight), each when wanted."""
    if logits.shape[0] == 0:
        if reduction == "sum":
            _write_rows(out, logits.new_zeros(0), "sum", 1.0)
        return
    _check_unit(x, "target")
    batch = x.shape[0]
    x = _float_target(x, logits.dtype)
    if logits.shape[0] != batch:  # samples: (L, B, D) views, over which x broadcasts
        logits, grad_logits, grad_x = (
            _samples_view(t, batch) if t.dim() == 2 else t for t in (logits, grad_logits, grad_x)
        )
        out = _samples_view(out, batch) if reduction == "none" else out
        weight = None if weight is None else _samples_view(weight, batch)
        pos_weight = None if pos_weight is None else _samples_view(pos_weight, batch)
    if pos_weight is None:
        _logits_plain_forward(out, grad_logits, grad_x, logits, x, weight, reduction, scale)
    else:
        _logits_pos_weight_forward(out, grad_logits, grad_x, logits, x, weight, pos_weight, reduction, scale)


@_entry
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
    if logits.shape[0] == 0:
        return
    g = _upstream(grad_out, reduction, scale)  # broadcasts over (R, D)
    if weight is not None:
        g = g * weight
    batch = x.shape[0]
    x = _float_target(x, logits.dtype)
    l = _samples_view(logits, batch)
    grad = _samples_view(grad_logits, batch)
    g_rows = g
    g = g if g.dim() < 2 else _samples_view(g, batch)
    if pos_weight is None:
        torch.sub(x, torch.sigmoid(l, out=grad), out=grad).mul_(g)  # (x - sigmoid(l)) g
        if _wanted(grad_x):
            torch.mul(logits, g_rows, out=grad_x)
        return
    q = _samples_view(pos_weight, batch)
    torch.mul(_logits_pos_weight_grad(l, x, q), g, out=grad)
    if _wanted(grad_x):
        sp_neg = private.softplus_out(-l, 1.0, _SOFTPLUS_THRESHOLD[l.dtype])
        torch.mul(sp_neg.mul_(1.0 - q).add_(l), g, out=_samples_view(grad_x, batch))


# --- Bernoulli decoder from probabilities ------------------------------------------------------


def _probs_terms(p: Tensor, x: Tensor) -> Tensor:
    """``x max(log p, -100) - (x - 1) max(log1p(-p), -100)`` (ATen's form: no cancellation at x = 1)
    with NaN-propagating clamps, for any input."""
    log_p = torch.log(p).clamp_min_(-100.0)
    log_1mp = torch.log1p(-p).clamp_min_(-100.0)
    return log_p.mul_(x).sub_(log_1mp.mul_(x - 1.0))


def _probs_grad(p: Tensor, x: Tensor) -> Tensor:
    """``(x - p) / max(p (1 - p), 1e-12)``, the max keeping NaN."""
    return (x - p).div_(torch.mul(1.0 - p, p).clamp_min_(_BCE_EPSILON))


@_entry
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
    """Exactly ``-F.binary_cross_entropy`` (logs clamped at -100), per element, row or in total;
    gradients scale * w (x - p) / max(p (1 - p), 1e-12) and scale * w logit(p), each when wanted."""
    if probs.shape[0] == 0:
        if reduction == "sum":
            _write_rows(out, probs.new_zeros(0), "sum", 1.0)
        return
    clean = _check_unit(probs, "input")
    clean = _check_unit(x, "target") and clean
    batch = x.shape[0]
    x = _float_target(x, probs.dtype)
    p = _samples_view(probs, batch)
    xs = x.expand_as(p)
    w = None if weight is None else _samples_view(weight, batch)
    if clean:  # torch's kernels raise on NaN: only when the range check has seen none
        neg_ll = torch.nn.functional.binary_cross_entropy(p, xs, weight=w, reduction="none")
    else:
        neg_ll = _probs_terms(p, xs).neg_()
        if w is not None:
            neg_ll.mul_(w)
    if reduction == "none":
        torch.mul(neg_ll, -scale, out=_samples_view(out, batch))
    else:
        _write_rows(out, neg_ll.sum(-1).reshape(-1), reduction, -scale)
    if _wanted(grad_probs):
        grad = _samples_view(grad_probs, batch)
        if clean:
            g = torch.tensor(-scale, dtype=probs.dtype, device=probs.device)
            torch.ops.aten.binary_cross_entropy_backward.grad_input(g, p, xs, w, 0, grad_input=grad)
        else:
            torch.mul(_probs_grad(p, xs), scale, out=grad)
            if w is not None:
                grad.mul_(w)
    if _wanted(grad_x):
        torch.logit(probs, out=grad_x).mul_(scale)
        if weight is not None:
            grad_x.mul_(weight)


@_entry
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
    if probs.shape[0] == 0:
        return
    g = _upstream(grad_out, reduction, scale)
    if weight is not None:
        g = g * weight
    batch = x.shape[0]
    x = _float_target(x, probs.dtype)
    p = _samples_view(probs, batch)
    gs = g if g.dim() < 2 else _samples_view(g, batch)
    torch.mul(_probs_grad(p, x), gs, out=_samples_view(grad_probs, batch))
    if _wanted(grad_x):
        torch.logit(probs, out=grad_x).mul_(g)


# --- location-scale decoders: Gaussian and error (squared / absolute) ------------------------------
# ll = -sum_d (a |x - m|^p exp(-s) + a s + c), one driver each way for both ops: ``form`` _GAUSSIAN
# (a = 1/2, p = 2, c = log(2 pi) / 2, s the log-variance) or the error decoders' power p = 2 or 1
# (a = 1, c = 0, s the log-scale). Where the two ops' rounding orders differ, each form keeps its own.

_GAUSSIAN = 0
_FORMS = {"gaussian": _GAUSSIAN, **ERROR_POWERS}  # sgvb_loss's decoders with a second parameter


def _half(form: int) -> float:
    return 0.5 if form == _GAUSSIAN else 1.0


def _error(d: Tensor, form: int) -> Tensor:
    """``|d|^p``, a new tensor."""
    return d.square() if form in (_GAUSSIAN, 2) else d.abs()


def _slope(d: Tensor, form: int, factor: Tensor | float, out: Tensor) -> None:
    """``out = factor * a p |d|^(p-1) sign(d)``: d (the Gaussian's a p = 1), 2 d, or torch's sign(d)
    (0 at 0 and NaN, as abs and l1_loss backward)."""
    if form in (_GAUSSIAN, 2):
        torch.mul(d, factor, out=out)
        if form == 2:
            out.mul_(2.0)
    else:
        torch.sign(d, out=out).mul_(factor)


def _shared_terms(x: Tensor, mean: Tensor, log_scale: Tensor, form: int) -> tuple[Tensor, Tensor, Tensor]:
    """One shared s: ``(x - m)`` (R, D) in the input dtype, ``S`` per row (sum of ``|x - m|^p``,
    float64, as the kernels: its gradient cancels once the scale fits), ``exp(-s)`` (float64)."""
    batch = x.shape[0]
    d = torch.sub(x, _samples_view(mean, batch)).reshape(mean.shape)
    err = torch.sum(_error(d, form), 1, dtype=torch.float64)
    inv_scale = torch.exp(-log_scale.reshape(()).double())
    return d, err, inv_scale


def _mean_grad_and_error(d: Tensor, iv: Tensor, form: int, grad_mean: Tensor | None, factor) -> Tensor:
    """Writes ``grad_mean = factor * dll/dm`` (when given) and returns ``|d|^p exp(-s)``; d and iv
    are overwritten. The Gaussian's is ``d (d exp(-v))``, from its dll/dm (its rounding order)."""
    if form == _GAUSSIAN:
        t = iv.mul_(d)
        if grad_mean is not None:
            torch.mul(t, factor, out=grad_mean)
        return d.mul_(t)
    if grad_mean is not None:
        _slope(d, form, iv, grad_mean)
        grad_mean.mul_(factor)
    return (d.square_() if form == 2 else d.abs_()).mul_(iv)


def _location_scale_forward(out, grad_mean, grad_log_scale, x, mean, log_scale, reduction, scale, form) -> None:
    """scale * -sum_d (a |x - m|^p exp(-s) + a s + c) per row or in total; gradients
    scale * a p |x - m|^(p-1) sign(x - m) exp(-s) and scale * a (|x - m|^p exp(-s) - 1) (summed when s is shared)."""
    R, D = mean.shape
    if R == 0:
        if reduction == "sum":
            _write_rows(out, mean.new_zeros(0), "sum", 1.0)
        if _wanted(grad_log_scale) and log_scale.numel() == 1:
            grad_log_scale.zero_()
        return
    x = _float_target(x, mean.dtype)
    batch = x.shape[0]
    a = _half(form)
    if log_scale.numel() == 1 and log_scale.dim() == 1:
        d, err, inv_scale = _shared_terms(x, mean, log_scale, form)
        s = log_scale.reshape(()).double()
        shift = s + LOG_2PI if form == _GAUSSIAN else s  # c / a + s
        rows = err.mul(inv_scale).add_(D * shift).mul_(-a)  # float64
        _write_rows(out, rows, reduction, scale)
        if _wanted(grad_mean):
            _slope(d, form, (inv_scale * scale).to(mean.dtype), grad_mean)
        if _wanted(grad_log_scale):
            grad_log_scale.copy_(err.mul(inv_scale).sub_(D).sum().mul_(a * scale).reshape(1))
        return
    m, s = _samples_view(mean, batch), _samples_view(log_scale, batch)
    gm = _samples_view(grad_mean, batch) if _wanted(grad_mean) else None
    e = _mean_grad_and_error(torch.sub(x, m), torch.neg(s).exp_(), form, gm, scale)
    if _wanted(grad_log_scale):
        torch.sub(e, 1.0, out=_samples_view(grad_log_scale, batch)).mul_(a * scale)
    rows = e.add_(s).sum(-1).reshape(-1)
    if form == _GAUSSIAN:
        rows.add_(D * LOG_2PI)
    _write_rows(out, rows, reduction, -a * scale)


def _location_scale_backward(grad_mean, grad_log_scale, grad_out, x, mean, log_scale, reduction, scale, form):
    R, D = mean.shape
    shared = log_scale.numel() == 1 and log_scale.dim() == 1
    if R == 0:
        if shared and _wanted(grad_log_scale):
            grad_log_scale.zero_()
        return
    x = _float_target(x, mean.dtype)
    batch = x.shape[0]
    a = _half(form)
    if shared:
        d, err, inv_scale = _shared_terms(x, mean, log_scale, form)
        # w_r = scale * grad_out[r] (or grad_out for 'sum'), float64
        w = grad_out.reshape(-1 if reduction == "rows" else ()).double() * scale
        if _wanted(grad_mean):
            g_mean = w.mul(inv_scale).to(mean.dtype)
            _slope(d, form, g_mean.unsqueeze(1) if g_mean.dim() else g_mean, grad_mean)
        if _wanted(grad_log_scale):
            grad_log_scale.copy_(err.mul(inv_scale).sub_(D).mul_(w).sum().mul_(a).reshape(1))
        return
    g = _upstream(grad_out, reduction, scale)
    m, s = _samples_view(mean, batch), _samples_view(log_scale, batch)
    gs = g if g.dim() < 2 else _samples_view(g, batch)
    gm = _samples_view(grad_mean, batch) if _wanted(grad_mean) else None
    e = _mean_grad_and_error(torch.sub(x, m), torch.neg(s).exp_(), form, gm, gs)
    if _wanted(grad_log_scale):
        g_s = torch.sub(e, 1.0, out=_samples_view(grad_log_scale, batch)).mul_(gs)
        if a != 1.0:
            g_s.mul_(a)


@_entry
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
    """scale * -0.5 sum_d (log 2pi + v + (x - m)^2 exp(-v)) per row or in total; gradients
    scale * (x - m) exp(-v) and scale * -0.5 (1 - (x - m)^2 exp(-v)) (summed when v is shared)."""
    _location_scale_forward(out, grad_mean, grad_logvar, x, mean, logvar, reduction, scale, _GAUSSIAN)


@_entry
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
    _location_scale_backward(grad_mean, grad_logvar, grad_out, x, mean, logvar, reduction, scale, _GAUSSIAN)


@_entry
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
    """scale * -sum_d (|x - m|^p exp(-s) + s) per row or in total; gradients
    scale * p |x - m|^(p-1) sign(x - m) exp(-s) and scale * (|x - m|^p exp(-s) - 1) (summed when s is shared)."""
    _location_scale_forward(out, grad_mean, grad_log_scale, x, mean, log_scale, reduction, scale, power)


@_entry
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
    _location_scale_backward(grad_mean, grad_log_scale, grad_out, x, mean, log_scale, reduction, scale, power)


# --- the whole loss of a step ------------------------------------------------------------------


@_entry
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
    """out 0-d = kl_scale * sum_r KL_r - ll_scale * sum_r log p(x_r | z_r), and its gradients (each
    given or (0,)): the KL entry and the decoder entry one after the other, totals added in float64."""
    totals: list[Tensor] = []  # the two float64 totals (see _write_rows)
    gaussian_kl_forward(totals, grad_mu, grad_logvar, mu, logvar, "sum", kl_scale)
    empty = decoded.new_empty(0)
    if likelihood == "bernoulli":
        bernoulli_log_likelihood_forward(totals, grad_decoded, empty, decoded, x, None, None, "sum", -ll_scale)
    elif likelihood == "bernoulli_probs":
        bernoulli_probs_log_likelihood_forward(totals, grad_decoded, empty, decoded, x, None, "sum", -ll_scale)
    elif likelihood in _FORMS:  # a decoder with a second parameter: the log-variance or log-scale
        assert decoder_logvar is not None  # zeros(1) when none is learned
        _location_scale_forward(
            totals, grad_decoded, grad_decoder_logvar, x, decoded, decoder_logvar, "sum", -ll_scale, _FORMS[likelihood]
        )
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}")
    torch.add(totals[0], totals[1], out=out)
