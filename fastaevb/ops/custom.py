"""The fused SGVB steps as ``torch.library`` custom ops: what ``torch.compile`` sees.

One op per fused step, plus its backward op so compiled backward graphs stay traceable:

====================================  ==============================================
``fastaevb::sgvb_loss``               the whole loss of a step: KL (App. B) + decoder log p(x|z) (App. C)
``fastaevb::reparameterize_kl``       z = mu + exp(logvar/2) eps (eq. 4) and the KL (App. B)
``fastaevb::gaussian_kl``             KL(q(z|x) || N(0, I)), Appendix B
``fastaevb::bernoulli_logits_ll``     Bernoulli log p(x|z) from logits, Appendix C.1
``fastaevb::bernoulli_probs_ll``      Bernoulli log p(x|z) from probabilities (F.binary_cross_entropy)
``fastaevb::gaussian_ll``             Gaussian log p(x|z), Appendix C.2
====================================  ==============================================

Each op's body is the kernel call of ``ops.calls``; the kernel is picked inside the op. The ops
are ``torch.library.triton_op``s (``ops.library``): a compiled graph holds one opaque node per step
on CPU, and on CUDA the Triton kernels themselves, for Inductor. Eagerly, ``fastaevb.ops`` skips this dispatcher
layer and runs ``ops.eager`` (the same calls under ``autograd.Function``); these ops are also
usable directly as ``torch.ops.fastaevb.*``.

Reduced ops take ``reduce`` ('elements' | 'rows' | 'total'), ``scale`` (multiplies the value
and its gradient: 'mean' and sign flips) and ``with_grad``: for a scalar result the gradient is
written during the forward pass and backward only multiplies it by the incoming scalar.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._dtypes import value_dtype
from . import autocast, calls, library


def _reduced_like(t: Tensor, reduce: str) -> Tensor:
    """A reduced op's value: elementwise in ``t``'s dtype, sums in its value dtype."""
    if reduce == "elements":
        return t.new_empty(t.shape)
    return t.new_empty(t.shape[:1] if reduce == "rows" else (), dtype=value_dtype(t.dtype))


def _grad_like(t: Tensor, with_grad: bool) -> Tensor:
    return t.new_empty(t.shape if with_grad else (0,))


def _register_reduced_autograd(op, backward_op, differentiable: tuple[int, ...], flags: int = 0) -> None:
    """Autograd for ops shaped ``op(*tensors, reduce, scale, with_grad, *flags) -> (out, *grads)``.

    ``differentiable`` are the positions of the tensors whose gradients ``grads`` (and
    ``backward_op(grad_out, *tensors, reduce, scale, *flags)``) return, in that order; ``flags``
    counts the trailing arguments after ``with_grad`` (``target_grad`` of the decoder ops).
    """

    def setup_context(ctx, inputs, output):
        *tensors, reduce, scale, with_grad = inputs[: len(inputs) - flags]
        grads_in_forward = output[1:]
        ctx.mark_non_differentiable(*grads_in_forward)
        ctx.set_materialize_grads(False)  # else autograd fills zeros shaped like those gradients
        ctx.reduce, ctx.scale, ctx.with_grad = reduce, scale, with_grad
        ctx.flags = inputs[len(inputs) - flags :]
        ctx.save_for_backward(*(grads_in_forward if with_grad else tensors))

    def backward(ctx, grad_out, *_):
        result: list[Tensor | None] = [None] * len(ctx.needs_input_grad)
        if grad_out is None:
            return tuple(result)
        saved = ctx.saved_tensors
        grads = (
            calls.scaled_grads(saved, grad_out)
            if ctx.with_grad
            else backward_op(grad_out, *saved, ctx.reduce, ctx.scale, *ctx.flags)
        )
        for position, grad in zip(differentiable, grads, strict=True):
            if ctx.needs_input_grad[position]:
                result[position] = grad
        return tuple(result)

    op.register_autograd(backward, setup_context=setup_context)


# --- the whole loss ----------------------------------------------------------------------------


@library.op("sgvb_loss")
def sgvb_loss(
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
    """Negative ELBO of eq. (10) in one call: ``kl_scale * sum_r KL_r - ll_scale * sum_r log p(x_r|z_r)``
    with KL of Appendix B and the decoder of Appendix C (``likelihood``: 'bernoulli_logits',
    'bernoulli_probs', 'gaussian'); with ``with_grad`` also its gradients with respect to
    (decoded, decoder_logvar, mu, logvar), written in the same pass."""
    return calls.sgvb_loss_forward(decoded, x, decoder_logvar, mu, logvar, likelihood, kl_scale, ll_scale, with_grad)


@sgvb_loss.register_fake
def _(decoded, x, decoder_logvar, mu, logvar, likelihood, kl_scale, ll_scale, with_grad):
    dlv = decoder_logvar if decoder_logvar is not None and likelihood == "gaussian" else decoded.new_empty(0)
    return (
        mu.new_empty((), dtype=value_dtype(mu.dtype)),
        _grad_like(decoded, with_grad),
        _grad_like(dlv, with_grad and dlv.numel() > 0),
        _grad_like(mu, with_grad),
        _grad_like(logvar, with_grad),
    )


@library.op("sgvb_loss_backward")
def sgvb_loss_backward(
    grad_out: Tensor,
    decoded: Tensor,
    x: Tensor,
    decoder_logvar: Tensor | None,
    mu: Tensor,
    logvar: Tensor,
    likelihood: str,
    kl_scale: float,
    ll_scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``grad_out`` times the gradients of :func:`sgvb_loss` (decoded, decoder_logvar, mu, logvar)."""
    return calls.sgvb_loss_backward(grad_out, decoded, x, decoder_logvar, mu, logvar, likelihood, kl_scale, ll_scale)


@sgvb_loss_backward.register_fake
def _(grad_out, decoded, x, decoder_logvar, mu, logvar, likelihood, kl_scale, ll_scale):
    dlv = decoder_logvar if decoder_logvar is not None and likelihood == "gaussian" else decoded.new_empty(0)
    return torch.empty_like(decoded), torch.empty_like(dlv), torch.empty_like(mu), torch.empty_like(logvar)


def _sgvb_loss_setup(ctx, inputs, output):
    decoded, x, decoder_logvar, mu, logvar, likelihood, kl_scale, ll_scale, with_grad = inputs
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)
    ctx.likelihood, ctx.kl_scale, ctx.ll_scale, ctx.with_grad = likelihood, kl_scale, ll_scale, with_grad
    ctx.save_for_backward(*(output[1:] if with_grad else (decoded, x, decoder_logvar, mu, logvar)))


def _sgvb_loss_grad(ctx, grad_out, *_):
    if grad_out is None:
        return (None,) * 9
    if ctx.with_grad:
        grads = calls.scaled_grads(ctx.saved_tensors, grad_out)
    else:
        decoded, x, decoder_logvar, mu, logvar = ctx.saved_tensors
        grads = sgvb_loss_backward(
            grad_out, decoded, x, decoder_logvar, mu, logvar, ctx.likelihood, ctx.kl_scale, ctx.ll_scale
        )
    grad_decoded, grad_decoder_logvar, grad_mu, grad_logvar = grads
    return (
        grad_decoded,
        None,
        grad_decoder_logvar if ctx.needs_input_grad[2] else None,
        grad_mu,
        grad_logvar,
        None,
        None,
        None,
        None,
    )


sgvb_loss.register_autograd(_sgvb_loss_grad, setup_context=_sgvb_loss_setup)


# --- reparameterize + KL ----------------------------------------------------------------------


@library.op("reparameterize_kl")
def reparameterize_kl(
    mu: Tensor,
    logvar: Tensor,
    seed: Tensor | None,
    eps: Tensor | None,
    samples: int,
    log_weights: bool,
    with_kl: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Eq. (4) and Appendix B in one pass: ``z = mu + exp(0.5*logvar)*eps`` for ``samples`` draws,
    ``KL = 0.5*sum_j(mu^2 + exp(logvar) - 1 - logvar)``, and optionally ``log q(z|x)``, ``log p(z)``.

    eps comes from the Philox stream ``randn(seed, flat index)`` unless given; it is never stored.
    Shapes: mu, logvar ``(R, J)`` -> z ``(samples, R, J)``, kl ``(R,)`` (empty when ``with_kl`` is
    False: ``reparameterize`` alone), log_q/log_p ``(samples, R)`` (empty when ``log_weights`` is False).
    """
    return calls.reparameterize_kl_forward(  # type: ignore[return-value]
        mu, logvar, seed, eps, samples, log_weights, with_kl
    )


@reparameterize_kl.register_fake
def _(mu, logvar, seed, eps, samples, log_weights, with_kl):
    rows, latent = mu.shape
    weights_shape = (samples, rows) if log_weights else (0,)
    sums = value_dtype(mu.dtype)  # KL and log-weight rows; z keeps mu's dtype
    return (
        mu.new_empty((samples, rows, latent)),
        mu.new_empty((rows,) if with_kl else (0,), dtype=sums),
        mu.new_empty(weights_shape, dtype=sums),
        mu.new_empty(weights_shape, dtype=sums),
    )


@library.op("reparameterize_kl_backward")
def reparameterize_kl_backward(
    grad_z: Tensor | None,
    grad_kl: Tensor | None,
    grad_log_q: Tensor | None,
    grad_log_p: Tensor | None,
    mu: Tensor,
    logvar: Tensor,
    seed: Tensor | None,
    eps: Tensor | None,
    samples: int,
) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`reparameterize_kl` with respect to mu and logvar; eps is regenerated."""
    return calls.reparameterize_kl_backward(  # type: ignore[return-value]
        grad_z, grad_kl, grad_log_q, grad_log_p, mu, logvar, seed, eps, samples
    )


@reparameterize_kl_backward.register_fake
def _(grad_z, grad_kl, grad_log_q, grad_log_p, mu, logvar, seed, eps, samples):
    return torch.empty_like(mu), torch.empty_like(logvar)


def _reparameterize_kl_setup(ctx, inputs, output):
    mu, logvar, seed, eps, samples, log_weights, with_kl = inputs
    ctx.save_for_backward(mu, logvar, seed, eps)
    ctx.samples, ctx.log_weights, ctx.with_kl = samples, log_weights, with_kl
    ctx.set_materialize_grads(False)


def _reparameterize_kl_grad(ctx, grad_z, grad_kl, grad_log_q, grad_log_p):
    # empty placeholders (no KL, no log-weights) may still get (empty) gradients: drop them
    grad_z, grad_kl, grad_log_q, grad_log_p = _used_grads(ctx, grad_z, grad_kl, grad_log_q, grad_log_p)
    if all(g is None for g in (grad_z, grad_kl, grad_log_q, grad_log_p)):
        return None, None, None, None, None, None, None
    mu, logvar, seed, eps = ctx.saved_tensors
    grad_mu, grad_logvar = reparameterize_kl_backward(
        grad_z, grad_kl, grad_log_q, grad_log_p, mu, logvar, seed, eps, ctx.samples
    )
    return grad_mu, grad_logvar, None, None, None, None, None


def _used_grads(ctx, grad_z, grad_kl, grad_log_q, grad_log_p):
    """The upstream gradients of the outputs that exist (kl without ``with_kl`` and the log-weights
    without ``log_weights`` are empty placeholders)."""
    if not ctx.with_kl:
        grad_kl = None
    if not ctx.log_weights:
        grad_log_q = grad_log_p = None
    return grad_z, grad_kl, grad_log_q, grad_log_p


reparameterize_kl.register_autograd(_reparameterize_kl_grad, setup_context=_reparameterize_kl_setup)


# --- analytic KL ------------------------------------------------------------------------------


@library.op("gaussian_kl")
def gaussian_kl(
    mu: Tensor, logvar: Tensor, reduce: str, scale: float, with_grad: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Appendix B: ``scale * 0.5 * sum_j (mu^2 + exp(logvar) - 1 - logvar)`` per row ('rows') or in
    total ('total'); with ``with_grad`` also ``scale * mu`` and ``scale * 0.5 * (exp(logvar) - 1)``."""
    return calls.gaussian_kl_forward(mu, logvar, reduce, scale, with_grad)  # type: ignore[return-value]


@gaussian_kl.register_fake
def _(mu, logvar, reduce, scale, with_grad):
    return _reduced_like(mu, reduce), _grad_like(mu, with_grad), _grad_like(logvar, with_grad)


@library.op("gaussian_kl_backward")
def gaussian_kl_backward(
    grad_out: Tensor, mu: Tensor, logvar: Tensor, reduce: str, scale: float
) -> tuple[Tensor, Tensor]:
    """``grad_out * scale * (mu, 0.5 * (exp(logvar) - 1))``, grad_out broadcast over each row."""
    return calls.gaussian_kl_backward(grad_out, mu, logvar, reduce, scale)  # type: ignore[return-value]


@gaussian_kl_backward.register_fake
def _(grad_out, mu, logvar, reduce, scale):
    return torch.empty_like(mu), torch.empty_like(logvar)


_register_reduced_autograd(gaussian_kl, gaussian_kl_backward, differentiable=(0, 1))


# --- Bernoulli decoder (from logits, from probabilities) --------------------------------------


def _target_grad_like(decoded: Tensor, target: Tensor, wanted: bool) -> Tensor:
    """The target gradient: ``target``'s shape in ``decoded``'s dtype (``functional`` casts a
    differentiable target to it), or an empty placeholder."""
    return decoded.new_empty(target.shape if wanted else (0,))


def _define_bernoulli_op(name: str, entry: str, forward_doc: str, backward_doc: str):
    """Define ``fastaevb::{name}`` and its backward op over the backends' ``{entry}_forward`` /
    ``{entry}_backward``: the two Bernoulli forms differ only in their formula. ``weight`` /
    ``pos_weight`` (None or ``(R, D)``, torch's BCE factors; ``pos_weight`` with logits only) and
    ``target_grad`` (``target`` is differentiated too) are the drop-ins' arguments."""

    @library.op(name)
    def forward(
        decoded: Tensor,
        target: Tensor,
        weight: Tensor | None,
        pos_weight: Tensor | None,
        reduce: str,
        scale: float,
        with_grad: bool,
        target_grad: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        return calls.bernoulli_forward(  # type: ignore[return-value]
            entry, decoded, target, weight, pos_weight, reduce, scale, with_grad, target_grad
        )

    @forward.register_fake
    def _(decoded, target, weight, pos_weight, reduce, scale, with_grad, target_grad):
        return (
            _reduced_like(decoded, reduce),
            _grad_like(decoded, with_grad),
            _target_grad_like(decoded, target, with_grad and target_grad),
        )

    @library.op(f"{name}_backward")
    def backward(
        grad_out: Tensor,
        decoded: Tensor,
        target: Tensor,
        weight: Tensor | None,
        pos_weight: Tensor | None,
        reduce: str,
        scale: float,
        target_grad: bool,
    ) -> tuple[Tensor, Tensor]:
        return calls.bernoulli_backward(
            entry, grad_out, decoded, target, weight, pos_weight, reduce, scale, target_grad
        )

    @backward.register_fake
    def _(grad_out, decoded, target, weight, pos_weight, reduce, scale, target_grad):
        return torch.empty_like(decoded), _target_grad_like(decoded, target, target_grad)

    forward.__doc__, backward.__doc__ = forward_doc, backward_doc
    _register_reduced_autograd(forward, backward, differentiable=(0, 1), flags=1)
    return forward, backward


bernoulli_logits_ll, bernoulli_logits_ll_backward = _define_bernoulli_op(
    "bernoulli_logits_ll",
    "bernoulli_logits",
    """Appendix C.1 from logits: ``scale * sum_d (x_d*l_d - softplus(l_d))``; gradients
    ``scale * (x - sigmoid(l))`` and, with ``target_grad``, ``d/dx = scale * l``. With ``weight`` w
    and ``pos_weight`` q, torch's BCE-with-logits negated: ``w * ((1 + (q - 1) x) logsigmoid(l) -
    (1 - x) l)``, ``d/dl = w * (q x - (q x + 1 - x) sigmoid(l))``, ``d/dx = w * (q logsigmoid(l) -
    logsigmoid(-l))`` (no ``pos_weight``: the plain form times w).

    ``target`` (float in [0, 1], uint8 or bool) is ``(B, D)`` for logits ``(R, D)``; row r uses
    target row ``r % B`` (its gradient sums those rows). Targets outside [0, 1] are flagged by the
    kernel and raise ValueError.
    """,
    """``grad_out * scale * (d/dl, d/dx)`` of :func:`bernoulli_logits_ll` (``d/dx`` empty without ``target_grad``).""",
)

bernoulli_probs_ll, bernoulli_probs_ll_backward = _define_bernoulli_op(
    "bernoulli_probs_ll",
    "bernoulli_probs",
    """Appendix C.1 from probabilities, as ``-F.binary_cross_entropy``: ``scale * sum_d w_d (x*max(log p, -100)
    + (1-x)*max(log(1-p), -100))`` (w: ``weight``, 1 when None; ``pos_weight`` must be None); gradients
    ``scale * w * (x - p) / max(p*(1-p), 1e-12)`` and, with ``target_grad``, torch's unclamped
    ``d/dx = scale * w * logit(p)``.

    Shapes as ``bernoulli_logits_ll``. Probabilities or targets outside [0, 1] are flagged by the
    kernel and raise ValueError.
    """,
    """``grad_out * scale * (d/dp, d/dx)`` of :func:`bernoulli_probs_ll` (``d/dx`` empty without ``target_grad``).""",
)


# --- Gaussian decoder -------------------------------------------------------------------------


@library.op("gaussian_ll")
def gaussian_ll(
    x: Tensor, mean: Tensor, logvar: Tensor, reduce: str, scale: float, with_grad: bool, target_grad: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Appendix C.2: ``scale * -0.5 * sum_d (log(2*pi) + v_d + (x_d - m_d)^2 * exp(-v_d))``.

    ``logvar`` is ``mean``'s shape or ``(1,)`` (one shared log-variance). Gradients:
    ``d/dm = (x - m) exp(-v)``, ``d/dv = -0.5 * (1 - (x - m)^2 exp(-v))`` (summed when shared) and,
    with ``target_grad``, ``d/dx = -(x - m) exp(-v)`` (summed over the rows sharing a data row).
    """
    return calls.gaussian_ll_forward(  # type: ignore[return-value]
        x, mean, logvar, reduce, scale, with_grad, target_grad
    )


@gaussian_ll.register_fake
def _(x, mean, logvar, reduce, scale, with_grad, target_grad):
    return (
        _reduced_like(mean, reduce),
        _grad_like(mean, with_grad),
        _grad_like(logvar, with_grad),
        _target_grad_like(mean, x, with_grad and target_grad),
    )


@library.op("gaussian_ll_backward")
def gaussian_ll_backward(
    grad_out: Tensor, x: Tensor, mean: Tensor, logvar: Tensor, reduce: str, scale: float, target_grad: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``grad_out * scale * (d/dmean, d/dlogvar, d/dx)`` of :func:`gaussian_ll` (``d/dx`` empty
    without ``target_grad``)."""
    return calls.gaussian_ll_backward(  # type: ignore[return-value]
        grad_out, x, mean, logvar, reduce, scale, target_grad
    )


@gaussian_ll_backward.register_fake
def _(grad_out, x, mean, logvar, reduce, scale, target_grad):
    return torch.empty_like(mean), torch.empty_like(logvar), _target_grad_like(mean, x, target_grad)


_register_reduced_autograd(gaussian_ll, gaussian_ll_backward, differentiable=(1, 2, 0), flags=1)


# float32 under torch.autocast, as torch's losses (the policy table is in ops.autocast)
autocast.register()
