"""The whole loss of a step, fused (the optional ``sgvb_loss_forward`` entry of docs/backends.md):
``kl_scale * sum_r KL_r - ll_scale * sum_r log p(x_r|z_r)`` and, where wanted, its gradients.

Two launches on CUDA: the decoder forward kernel with ``HAS_KL`` (its first programs also write
the KL rows and their gradients), then ``reduce.finish_kernel`` (fixed-order float64 sum of both
row sets into the 0-d loss, and the range check; a shared Gaussian decoder log-variance or error
decoder log-scale with gradients adds one more finish for its gradient). 'mse' and 'l1' are the
error decoder (``error_log_likelihood.py``, power 2 and 1), its log-scale in ``decoder_logvar``.
"""

from __future__ import annotations

from itertools import product

import torch

from ..ops.table import ERROR_POWERS
from . import _aot_spec as aot
from . import bernoulli_log_likelihood as bn
from . import error_log_likelihood as el
from . import gaussian_log_likelihood as gl
from ._common import DTYPES, _zero, acc_dtype, check_width, data_tile_name, grad_slots, target_view, wanted
from .gaussian_kl import gaussian_kl_forward
from .reduce import bad_counts, finish

LIKELIHOODS = ("bernoulli", "bernoulli_probs", "gaussian", "mse", "l1")
# The decoders with a second parameter (decoder_logvar): their forward kernel and form, one launcher.
_LOCATION_SCALE = {
    "gaussian": (gl.gaussian_log_likelihood_fwd_kernel, gl.GAUSSIAN),
    **{name: (el.error_log_likelihood_fwd_kernel, power) for name, power in ERROR_POWERS.items()},
}


def _separately(out, grads, decoded, x, decoder_logvar, mu, logvar, likelihood, kl_scale, ll_scale) -> None:
    """No rows on one side: the plain entries into two 0-d sums, added (edge case, not the hot path)."""
    grad_decoded, grad_decoder_logvar, grad_mu, grad_logvar = grads
    kl, ll = (torch.empty((), dtype=out.dtype, device=out.device) for _ in range(2))
    gaussian_kl_forward(kl, grad_mu, grad_logvar, mu, logvar, "sum", kl_scale)
    if likelihood in _LOCATION_SCALE:
        kernel, form = _LOCATION_SCALE[likelihood]
        gl._forward(kernel, form, ll, grad_decoded, grad_decoder_logvar, x, decoded, decoder_logvar, "sum", -ll_scale)
    elif likelihood == "bernoulli_probs":
        bn.bernoulli_probs_log_likelihood_forward(
            ll, grad_decoded, decoded.new_empty(0), decoded, x, None, "sum", -ll_scale
        )
    else:
        bn.bernoulli_log_likelihood_forward(
            ll, grad_decoded, decoded.new_empty(0), decoded, x, None, None, "sum", -ll_scale
        )
    torch.add(kl, ll, out=out)


def sgvb_loss_forward(
    out,
    grad_decoded,
    grad_decoder_logvar,
    grad_mu,
    grad_logvar,
    decoded,
    x,
    decoder_logvar,
    mu,
    logvar,
    likelihood,
    kl_scale,
    ll_scale,
) -> None:
    """``out``: 0-d (the value dtype); each gradient like its input, or ``(0,)`` when not wanted
    (``grad_decoder_logvar`` is ``(0,)`` unless ``likelihood`` is 'gaussian', 'mse' or 'l1' with
    gradients; for 'mse' / 'l1' ``decoder_logvar`` is the log-scale s)."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    # a decoder with a (log-variance or log-scale) parameter in decoder_logvar
    scaled = likelihood in _LOCATION_SCALE
    if scaled and decoder_logvar is None:  # the default decoder: one shared log-variance (log-scale) of 0
        decoder_logvar = _zero(decoded.dtype, str(decoded.device))  # cached, never written
    R, D = decoded.shape
    KR, KJ = mu.shape
    grads = (grad_decoded, grad_decoder_logvar, grad_mu, grad_logvar)
    if R == 0 or KR == 0:
        return _separately(out, grads, decoded, x, decoder_logvar, mu, logvar, likelihood, kl_scale, ll_scale)
    check_width(D)
    check_width(KJ, "latent width")
    dev = decoded.device
    acc = acc_dtype(decoded.dtype)
    kl_part = torch.empty(KR, dtype=acc, device=dev)
    part = torch.empty(R, dtype=acc, device=dev)
    # one WITH_GRAD flag for the decoder and the KL gradients
    any_grad = any(wanted(g) for g in grads if g is not grad_decoder_logvar or scaled)
    _, (gmu, gv) = grad_slots((grad_mu, mu), (grad_logvar, logvar), always=any_grad)
    kl = (mu, logvar, kl_part, gmu, gv, kl_scale)
    if scaled:
        shared = gl._shared(decoded, decoder_logvar)
        with_grad, gd, gdv = gl._grad_slots(
            grad_decoded, grad_decoder_logvar, decoded, decoder_logvar, shared, always=any_grad
        )
        kernel, form = _LOCATION_SCALE[likelihood]
        gl._launch_forward(kernel, form, x, decoded, decoder_logvar, part, gd, gdv, -ll_scale, shared, with_grad, kl=kl)
        gl._finish_shared(grad_decoder_logvar, gdv, shared, with_grad)
        finish(out, (part, kl_part))
        return
    probs = likelihood == "bernoulli_probs"
    x = target_view(x)
    with_grad, (gd,) = grad_slots((grad_decoded, decoded), always=any_grad)
    _, bad_in, bad_x = bad_counts(R, dev)
    bn._launch_forward(decoded, x, part, gd, bad_in, bad_x, -ll_scale, probs, False, with_grad, kl=kl)
    finish(out, (part, kl_part), bad_in if probs else None, bad_x)


def aot_specs() -> list:
    """Every launch of the fused entry: each dtype and decoder width class, every likelihood (float
    and uint8 targets for the Bernoulli ones; a per-element or shared Gaussian decoder log-variance
    or error decoder log-scale), with and without gradients. The KL rows' latent width is not
    specialized."""
    with aot.recording() as rec:
        for dtype, D, likelihood, with_grad in product(DTYPES, aot.widths(data_tile_name), LIKELIHOODS, (False, True)):
            decoded = aot.rows(dtype, D)
            mu = aot.rows(dtype, 5, aot.DATA_ROWS)
            out = aot.value_out(decoded, "sum")
            latent = aot.grads(mu, mu, wanted=with_grad)
            if likelihood in _LOCATION_SCALE:
                x = aot.rows(dtype, D, aot.DATA_ROWS)
                for decoder_logvar in (decoded, torch.zeros(1, dtype=dtype)):
                    decoder = aot.grads(decoded, decoder_logvar, wanted=with_grad)
                    sgvb_loss_forward(out, *decoder, *latent, decoded, x, decoder_logvar, mu, mu, likelihood, 1.0, 1.0)
                continue
            for target in (dtype, torch.uint8):
                x = aot.rows(target, D, aot.DATA_ROWS)
                slots = (*aot.grads(decoded, wanted=with_grad), decoded.new_empty(0), *latent)
                sgvb_loss_forward(out, *slots, decoded, x, None, mu, mu, likelihood, 1.0, 1.0)
    return rec.specs
