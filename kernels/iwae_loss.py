"""The negative importance-weighted bound of Burda et al. (2016) (ops/table.py's ``iwae_loss``,
the optional fused entries of docs/backends.md) and its gradients: **one program per datapoint**.

Program b walks its K decoder rows ``k B + b`` (decoded ``(K B, D)``) and latent rows ``z[k, b]``:

1. ``ll_k = sum_d log p(x_bd | decoded_kd)`` with the decoders of ``sgvb_loss`` (formulas.py),
   into a ``(K, B)`` log-weight scratch (x's row is read once per tile and broadcast over k);
2. ``log w_k = ll_k + 0.5 sum_j (eps_kj^2 - z_kj^2 + v_j)``, ``eps = (z - mu) exp(-v / 2)``:
   log p(z) - log q(z|x), whose log(2 pi) terms cancel;
3. ``lse = logsumexp_k log w_k`` (max, then the sum of exponentials) and the row value
   ``-scale (lse - log K)``;
4. with gradients, ``c_k = -scale up_b exp(log w_k - lse)`` (``d loss / d log w_k``):
   ``d/d decoded_k = c_k d ll_k``, recomputed from decoded (a second read, no ``(K, B, D)``
   scratch beyond the gradient itself), the decoder log-scale's likewise (a shared one: one
   partial per datapoint), the gate token ``-c_k`` (``functional.dreg_gate``);
5. ``d/dz_k = c_k (eps_k exp(-v / 2) - z_k)``, and the 'iwae' gradient's direct terms
   ``d/dmu = -exp(-v / 2) sum_k c_k eps_k``, ``d/dv = 0.5 sum_k c_k (1 - eps_k^2)`` (written to
   scratch for 'stl' / 'dreg', whose shape rule has no such output).

Steps write and re-read the scratch within the program (``tl.debug_barrier`` between them). A
'sum' (and the range checks of the Bernoulli decoders, and a shared log-scale's gradient) ends in
``reduce.finish_kernel``: fixed-order float64 sums, the device-side assert.
"""

from __future__ import annotations

import math
from itertools import product

import torch
import triton
import triton.language as tl

from . import _aot_spec as aot
from . import formulas as m
from ._common import (
    DTYPES,
    _zero,
    acc_dtype,
    check_width,
    data_tile_name,
    fill_empty_sum,
    grad_slots,
    iwae_tile,
    launch,
    row_sums,
    target_view,
    wanted,
)
from .reduce import bad_counts, finish

# The decoder of each likelihood (constexpr FORM): Bernoulli from logits or probabilities, the
# Gaussian, the error decoders (squared, absolute) with their log-scale in decoder_logvar.
FORMS = {"bernoulli": 0, "bernoulli_probs": 1, "gaussian": 2, "mse": 3, "l1": 4}
LATENT_BLOCK_K, LATENT_BLOCK_J = 16, 32  # the latent tile: J is not specialized


@triton.jit
def _decoder(v, x, s, FORM: tl.constexpr):
    """Elementwise ``(ll, d ll / d decoded, d ll / d log-scale)`` (the last is ``v``, unused, for
    the Bernoulli decoders)."""
    if FORM == 0:
        ll, dv = m.bernoulli_logits(v, x)
        return ll, dv, v
    elif FORM == 1:
        ll, dv = m.bernoulli_probs(v, x)
        return ll, dv, v
    elif FORM == 2:
        return m.gaussian_ll(x, v, s)
    elif FORM == 3:
        return m.error_ll(x, v, s, 2)
    else:
        return m.error_ll(x, v, s, 1)


@triton.jit
def _tile(dec_ptr, x_ptr, s_ptr, s_shared, b, off, mask, cols, D, FORM: tl.constexpr, SHARED: tl.constexpr, ACC):
    """``(ll, d/dv, d/ds, v)`` on one ``(BLOCK_K, BLOCK_D)`` tile of datapoint b's decoder rows at
    ``off`` (computed by the caller: torch's mutation analysis of a launch follows a stored-to
    offset back through a helper's arguments); masked lanes hold harmless values (logit 0, p =
    0.5, a zero residual)."""
    x = tl.load(x_ptr + b * D + cols, mask=cols < D, other=0).to(ACC)[None, :]
    v = tl.load(dec_ptr + off, mask=mask, other=0.5 if FORM == 1 else 0.0).to(ACC)
    if FORM >= 2:
        if SHARED:
            s = s_shared
        else:
            s = tl.load(s_ptr + off, mask=mask, other=0.0).to(ACC)
    else:
        s = v
    ll, dv, ds = _decoder(v, x, s, FORM)
    return ll, dv, ds, v


@triton.jit
def _latents(z_ptr, mu_ptr, v_ptr, b, off, mask, jj, J, ACC):
    """``(z, eps, exp(-v / 2))`` on one ``(LBLOCK_K, BLOCK_J)`` latent tile at ``off``."""
    jmask = jj < J
    mu = tl.load(mu_ptr + b * J + jj, mask=jmask, other=0.0).to(ACC)
    inv_std = tl.exp(-0.5 * tl.load(v_ptr + b * J + jj, mask=jmask, other=0.0).to(ACC))
    z = tl.load(z_ptr + off, mask=mask, other=0.0).to(ACC)
    return z, (z - mu[None, :]) * inv_std[None, :], inv_std


@triton.jit(do_not_specialize=["go_stride", "K", "B", "J"])
def iwae_loss_kernel(
    dec_ptr,
    x_ptr,
    s_ptr,
    z_ptr,
    mu_ptr,
    v_ptr,
    go_ptr,
    go_stride: tl.int64,
    rows_ptr,
    lw_ptr,
    gd_ptr,
    gs_ptr,
    gz_ptr,
    gm_ptr,
    gv_ptr,
    gg_ptr,
    bad_in_ptr,
    bad_x_ptr,
    K: tl.int64,
    B: tl.int64,
    D,
    J: tl.int32,
    scale: tl.float64,
    log_k: tl.float64,
    FORM: tl.constexpr,
    SHARED: tl.constexpr,
    WITH_GRAD: tl.constexpr,
    HAS_UP: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    LBLOCK_K: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if dec_ptr.dtype.element_ty == tl.float64 else tl.float32
    b = tl.program_id(0).to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    ls = tl.arange(0, LBLOCK_K)
    js = tl.arange(0, BLOCK_J)
    one = tl.zeros([1], ACC)
    s_shared = tl.sum(one, axis=0)
    if SHARED:
        s_shared = tl.load(s_ptr).to(ACC)

    # 1. the decoder rows' log-likelihoods (and the range counts of the Bernoulli decoders)
    if FORM <= 1:
        bad_x = tl.zeros([BLOCK_D], tl.int32)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            x = tl.load(x_ptr + b * D + cols, mask=cols < D, other=0).to(ACC)
            bad_x += tl.where(cols < D, m.out_of_unit_range(x), 0)
        tl.store(bad_x_ptr + b, tl.sum(bad_x, axis=0))
    bad_in = tl.zeros([BLOCK_K, BLOCK_D], tl.int32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + ks
        kmask = k < K
        acc = tl.zeros([BLOCK_K, BLOCK_D], ACC)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            mask = kmask[:, None] & (cols < D)[None, :]
            off = (k * B + b)[:, None] * D + cols[None, :]
            ll, _, _, v = _tile(dec_ptr, x_ptr, s_ptr, s_shared, b, off, mask, cols, D, FORM, SHARED, ACC)
            acc += tl.where(mask, ll, 0.0)
            if FORM == 1:
                bad_in += tl.where(mask, m.out_of_unit_range(v), 0)
        tl.store(lw_ptr + k * B + b, tl.sum(acc, axis=1), mask=kmask)
    if FORM == 1:
        tl.store(bad_in_ptr + b, tl.sum(tl.sum(bad_in, axis=1), axis=0))
    tl.debug_barrier()

    # 2. log p(z) - log q(z|x) = 0.5 sum_j (eps^2 - z^2 + v_j) added to each log weight
    half = tl.zeros([BLOCK_J], ACC)
    for j0 in range(0, J, BLOCK_J):
        jj = j0 + js
        half += tl.load(v_ptr + b * J + jj, mask=jj < J, other=0.0).to(ACC)
    sum_v = tl.sum(half, axis=0)
    for k0 in range(0, K, LBLOCK_K):
        k = k0 + ls
        kmask = k < K
        q = tl.zeros([LBLOCK_K, BLOCK_J], ACC)
        for j0 in range(0, J, BLOCK_J):
            jj = j0 + js
            mask = kmask[:, None] & (jj < J)[None, :]
            z, e, _ = _latents(z_ptr, mu_ptr, v_ptr, b, (k * B + b)[:, None] * J + jj[None, :], mask, jj, J, ACC)
            q += tl.where(mask, e * e - z * z, 0.0)
        lw = tl.load(lw_ptr + k * B + b, mask=kmask, other=0.0) + 0.5 * (tl.sum(q, axis=1) + sum_v)
        tl.store(lw_ptr + k * B + b, lw, mask=kmask)
    tl.debug_barrier()

    # 3. their log-sum-exp and the row value
    top = tl.full([LBLOCK_K], float("-inf"), ACC)
    for k0 in range(0, K, LBLOCK_K):
        k = k0 + ls
        top = tl.maximum(top, tl.load(lw_ptr + k * B + b, mask=k < K, other=float("-inf")))
    top_all = tl.max(top, axis=0)
    total = tl.zeros([LBLOCK_K], ACC)
    for k0 in range(0, K, LBLOCK_K):
        k = k0 + ls
        total += tl.where(k < K, tl.exp(tl.load(lw_ptr + k * B + b, mask=k < K, other=0.0) - top_all), 0.0)
    lse = top_all + tl.log(tl.sum(total, axis=0))
    sc = tl.sum(m.scalar_as(scale, one), axis=0)
    tl.store(rows_ptr + b, -sc * (lse - tl.sum(m.scalar_as(log_k, one), axis=0)))

    if WITH_GRAD:
        # 4. the decoder rows' gradients times c_k = d loss / d log w_k, and the gate token's
        c_scale = -sc
        if HAS_UP:
            c_scale = c_scale * tl.load(go_ptr + b * go_stride).to(ACC)
        shared_grad = tl.zeros([BLOCK_K, BLOCK_D], ACC)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + ks
            kmask = k < K
            c = c_scale * tl.exp(tl.load(lw_ptr + k * B + b, mask=kmask, other=0.0) - lse)
            tl.store(gg_ptr + k * B + b, -c, mask=kmask)
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + tl.arange(0, BLOCK_D)
                mask = kmask[:, None] & (cols < D)[None, :]
                off = (k * B + b)[:, None] * D + cols[None, :]
                _, dv, ds, _ = _tile(dec_ptr, x_ptr, s_ptr, s_shared, b, off, mask, cols, D, FORM, SHARED, ACC)
                tl.store(gd_ptr + off, c[:, None] * dv, mask=mask)
                if FORM >= 2:
                    if SHARED:
                        shared_grad += tl.where(mask, c[:, None] * ds, 0.0)
                    else:
                        tl.store(gs_ptr + off, c[:, None] * ds, mask=mask)
        if SHARED:  # one partial per datapoint, summed by finish_kernel
            tl.store(gs_ptr + b, tl.sum(tl.sum(shared_grad, axis=1), axis=0))

        # 5. the latents' gradients
        for j0 in range(0, J, BLOCK_J):
            jj = j0 + js
            acc_mu = tl.zeros([LBLOCK_K, BLOCK_J], ACC)
            acc_v = tl.zeros([LBLOCK_K, BLOCK_J], ACC)
            inv_std = tl.zeros([BLOCK_J], ACC)
            for k0 in range(0, K, LBLOCK_K):
                k = k0 + ls
                kmask = k < K
                c = (c_scale * tl.exp(tl.load(lw_ptr + k * B + b, mask=kmask, other=0.0) - lse))[:, None]
                mask = kmask[:, None] & (jj < J)[None, :]
                off = (k * B + b)[:, None] * J + jj[None, :]
                z, e, inv_std = _latents(z_ptr, mu_ptr, v_ptr, b, off, mask, jj, J, ACC)
                tl.store(gz_ptr + off, c * (e * inv_std[None, :] - z), mask=mask)
                acc_mu += tl.where(mask, c * e, 0.0)
                acc_v += tl.where(mask, c * (1.0 - e * e), 0.0)
            tl.store(gm_ptr + b * J + jj, -tl.sum(acc_mu, axis=0) * inv_std, mask=jj < J)
            tl.store(gv_ptr + b * J + jj, 0.5 * tl.sum(acc_v, axis=0), mask=jj < J)


def _run(out, grads, grad_out, decoded, x, decoder_logvar, z, mu, logvar, likelihood, reduction, scale) -> None:
    """One launch of :func:`iwae_loss_kernel` (plus ``finish_kernel`` where needed). ``out``: the
    value (None in backward); ``grads``: the six gradient slots, each given or ``(0,)``."""
    if likelihood not in FORMS:
        raise ValueError(f"likelihood must be one of {tuple(FORMS)}, got {likelihood!r}")
    form = FORMS[likelihood]
    K, B, J = z.shape
    D = decoded.shape[1]
    if B == 0:  # no datapoints, no launch: a 'sum' is scale * 0 (NaN for a mean over none, as torch's)
        if out is not None:
            fill_empty_sum(out, reduction, scale)
        for g in grads:
            g.zero_()  # empty, but a shared log-scale's gradient (1,)
        return
    check_width(D)
    check_width(J, "latent width")
    dev = decoded.device
    acc = acc_dtype(decoded.dtype)
    if form >= 2 and decoder_logvar is None:  # the default decoder: one shared log-scale of 0
        decoder_logvar = _zero(decoded.dtype, str(dev))  # cached, never written
    shared = form >= 2 and decoder_logvar.numel() == 1
    grad_decoded, grad_scale, grad_z, grad_mu, grad_logvar, grad_gate = grads
    backward = grad_out is not None
    # every gradient is written together: unwanted ones into scratch
    pairs = (grad_decoded, decoded), (grad_z, z), (grad_mu, mu), (grad_logvar, logvar)
    with_grad, (gd, gz, gm, gv) = grad_slots(*pairs, always=backward or wanted(grad_scale))
    gg = grad_gate if wanted(grad_gate) else torch.empty((K, B), dtype=z.dtype, device=dev) if with_grad else z
    gs = decoded  # never written: a Bernoulli decoder, or no gradients
    if form >= 2 and with_grad:  # a shared log-scale's gradient: one partial per datapoint
        gs = torch.empty(B, dtype=acc, device=dev) if shared else grad_slots((grad_scale, decoded), always=True)[1][0]
    # the row values: the output itself for 'rows', partials for a 'sum', scratch in backward
    rows = torch.empty(B, dtype=acc, device=dev) if out is None else row_sums(out, reduction, B, decoded.dtype)
    _, bad_in, bad_x = bad_counts(B, dev)
    go, go_stride = (grad_out, int(reduction == "rows")) if backward else (rows, 0)
    x = target_view(x)
    tile = iwae_tile(D)
    launch(
        iwae_loss_kernel,
        (B,),
        dev,
        decoded,
        x,
        decoder_logvar if form >= 2 else decoded,
        z,
        mu,
        logvar,
        go,
        go_stride,
        rows,
        torch.empty(K * B, dtype=acc, device=dev),
        gd,
        gs,
        gz,
        gm,
        gv,
        gg,
        bad_in,
        bad_x,
        K,
        B,
        D,
        J,
        float(scale),
        math.log(K),
        FORM=form,
        SHARED=shared,
        WITH_GRAD=with_grad,
        HAS_UP=backward,
        LBLOCK_K=LATENT_BLOCK_K,
        BLOCK_J=LATENT_BLOCK_J,
        **tile,
    )
    if shared and with_grad and wanted(grad_scale):
        finish(grad_scale, (gs,))
    if out is not None:  # the forward: its total and range checks (backward reruns neither)
        parts = (rows,) if reduction == "sum" else ()
        finish(out, parts, bad_in if form == 1 else None, bad_x if form <= 1 else None)


def iwae_loss_forward(
    out, grad_decoded, grad_decoder_logvar, grad_z, grad_mu, grad_logvar, grad_gate,
    decoded, x, decoder_logvar, z, mu, logvar, likelihood, gradient, reduction, scale,
) -> None:  # fmt: skip
    """``out``: ``(B,)`` ('rows') or 0-d ('sum') in the value dtype, ``-scale (logsumexp_k log w_k -
    log K)``; the gradients of the scaled total (each like its input, or ``(0,)``) in the same
    launch. ``gradient`` ('iwae', 'stl', 'dreg') only decides which slots the op layer gives."""
    grads = (grad_decoded, grad_decoder_logvar, grad_z, grad_mu, grad_logvar, grad_gate)
    _run(out, grads, None, decoded, x, decoder_logvar, z, mu, logvar, likelihood, reduction, scale)


def iwae_loss_backward(
    grad_decoded, grad_decoder_logvar, grad_z, grad_mu, grad_logvar, grad_gate, grad_out,
    decoded, x, decoder_logvar, z, mu, logvar, likelihood, gradient, reduction, scale,
) -> None:  # fmt: skip
    """The gradients times ``grad_out`` (0-d, or ``(B,)`` for 'rows'), from the same kernel."""
    grads = (grad_decoded, grad_decoder_logvar, grad_z, grad_mu, grad_logvar, grad_gate)
    _run(None, grads, grad_out, decoded, x, decoder_logvar, z, mu, logvar, likelihood, reduction, scale)


def aot_specs() -> list:
    """Every launch of both entries: each dtype and decoder width class, every likelihood (float
    and uint8 targets for the Bernoulli ones; a per-element or shared log-scale for the others),
    the forward with and without gradients and the backward. J is not specialized."""
    K, B, J = 2, aot.DATA_ROWS, 5
    with aot.recording() as rec:
        for dtype, D, likelihood in product(DTYPES, aot.widths(data_tile_name), FORMS):
            decoded = aot.rows(dtype, D, K * B)
            z = torch.zeros(K, B, J, dtype=dtype)
            mu = aot.rows(dtype, J, B)
            scaled = FORMS[likelihood] >= 2
            targets = (dtype,) if scaled else (dtype, torch.uint8)
            log_scales = (decoded, torch.zeros(1, dtype=dtype)) if scaled else (None,)
            parts = ("forward", "forward_grad", "backward")
            for target, log_scale, part, reduction in product(targets, log_scales, parts, ("rows", "sum")):
                x = aot.rows(target, D, B)
                like = log_scale if scaled else decoded
                slots = aot.grads(decoded, like, z, mu, mu, z[..., 0], wanted=part != "forward")
                tensors = (decoded, x, log_scale, z, mu, mu)
                if part == "backward":
                    upstream = aot.upstream(mu, reduction)
                    iwae_loss_backward(*slots, upstream, *tensors, likelihood, "iwae", reduction, 1.0)
                else:
                    out = aot.value_out(mu, reduction)
                    iwae_loss_forward(out, *slots, *tensors, likelihood, "iwae", reduction, 1.0)
    return rec.specs


__all__ = ["iwae_loss_forward", "iwae_loss_backward"]
