"""Every fused op of fastaevb, described once (the role of PyTorch's ``native_functions.yaml``).

An :class:`Op` row holds everything the layers below the public API need to know about an op:
its arguments in order (tensors with their role and whether they are differentiable, then
scalars), its outputs with the output-shape rule, its autocast policy and the name of an
optional C++ autograd entry. ``ops.registrar`` reads this table and makes, for each row, the
``torch.library`` custom op ``fastaevb::<name>`` (schema, fake kernel, autograd, autocast) and
its backward op, and the eager ``torch.autograd.Function``; ``ops.calls`` uses the same shape
rule to allocate the outputs that each backend's ``<name>_forward`` / ``<name>_backward``
entry writes into (``docs/backends.md``). The op's name is the public function's name and the
stem of its kernel files in every language (``csrc/<name>.cpp``, ``kernels/<name>.py``).

Kinds of op:

- ``loss``: ``(value, *grads)``. ``reduction`` is ``'none'`` (elementwise), ``'rows'`` (one value
  per row) or ``'sum'`` (0-d); ``scale`` multiplies the value and its gradients. With
  ``with_grad`` (a scalar loss whose gradient is wanted) the gradients of the differentiable
  tensors are written in the forward pass, and backward only scales them by the upstream
  gradient (Liger-Kernel's trick); otherwise backward calls the ``<name>_backward`` entry.
- ``sample``: the reparameterized sample and its companions; backward takes the upstream
  gradient of every output (eps is regenerated from the seed, never stored).

Why a table and not a module per op: the ops share their calling convention, so one registrar
generates the four registrations from one row, and the argument list is written once
(``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

# Tensor roles: how ops.calls prepares a tensor for a backend.
FLOAT = "float"  # cast to the compute dtype, contiguous
TARGET = "target"  # Bernoulli targets: float (cast), uint8, or bool (viewed as uint8)
FACTOR = "factor"  # BCE weight / pos_weight: (R, D) broadcast views, kept as they lie, value dtype
SEED = "seed"  # the Philox seed: a CPU int64 tensor, or a device tensor on CUDA
# A 0-d weight that changes every step (a KL weight under annealing): a tensor, so torch.compile
# does not bake it into the graph (a float is specialized: one recompile per value); ops.calls
# multiplies it into the scalar named by ``scales`` and does not pass it to the backend entry.
SCALE = "scale"
# The DReG gate's token (``functional.dreg_gate``): a zero tensor that only carries a gradient
# back to the gate (the normalized importance weights); not passed to the backend entries.
TOKEN = "token"


@dataclass(frozen=True)
class Tensor_:
    name: str
    role: str = FLOAT
    optional: bool = False
    differentiable: bool = False
    scales: str | None = None  # role SCALE: the scalar it multiplies

    @property
    def schema(self) -> str:
        return f"Tensor{'?' if self.optional else ''} {self.name}"


@dataclass(frozen=True)
class Scalar:
    name: str
    type: str  # schema type: str, float, bool, int

    @property
    def schema(self) -> str:
        return f"{self.type} {self.name}"


def _elementwise(a: SimpleNamespace) -> bool:
    return False


# An output: its name, its shape from the arguments, and whether it is a sum (value dtype:
# float32 for half inputs) or elementwise (the dtype of the op's main tensor), also from them.
@dataclass(frozen=True)
class Output:
    name: str
    shape: Callable[[SimpleNamespace], tuple[int, ...]]
    summed: Callable[[SimpleNamespace], bool] = _elementwise


@dataclass(frozen=True)
class Op:
    name: str
    kind: str  # "loss" | "sample"
    tensors: tuple[Tensor_, ...]
    scalars: tuple[Scalar, ...]
    outputs: tuple[Output, ...]
    doc: str
    main: str  # the tensor whose device and dtype the op runs in
    float32_under_autocast: bool = True
    native: str | None = None  # the backend's C++ autograd entry, where one is measurably faster
    # the scalars the backend entries take (a loss op's, less with_grad; the sample op's samples)
    entry_scalars: tuple[str, ...] = field(default=())
    # scalars ops.calls applies around the backend entries (not passed to them; backward takes them)
    composite_scalars: tuple[str, ...] = field(default=())
    # backends may leave out the fused entries: ops.calls then builds the op from other ops' entries
    optional_entries: bool = False

    @property
    def schema(self) -> str:
        args = ", ".join([t.schema for t in self.tensors] + [s.schema for s in self.scalars])
        return f"({args}) -> ({', '.join('Tensor' for _ in self.outputs)})"

    @property
    def arg_names(self) -> tuple[str, ...]:
        return tuple([t.name for t in self.tensors] + [s.name for s in self.scalars])

    @property
    def differentiable(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors if t.differentiable)

    @property
    def backward_scalars(self) -> tuple[Scalar, ...]:
        """The scalars of the backward op: the entries', the composite ones and ``target_grad``
        (which picks its outputs)."""
        kept = {*self.entry_scalars, *self.composite_scalars, "target_grad"}
        return tuple(s for s in self.scalars if s.name in kept)

    @property
    def differentiable_positions(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.tensors) if t.differentiable)

    def args(self, values: tuple) -> SimpleNamespace:
        """The op's arguments by name."""
        return SimpleNamespace(**dict(zip(self.arg_names, values, strict=True)))


# --- the output-shape rule's pieces -------------------------------------------------------------


def reduced(main: str) -> Callable[[SimpleNamespace], tuple[int, ...]]:
    """A loss value: ``main``'s shape ('none'), its rows ('rows') or 0-d ('sum')."""

    def shape(a: SimpleNamespace) -> tuple[int, ...]:
        t = getattr(a, main)
        reduction = getattr(a, "reduction", "sum")
        return tuple(t.shape) if reduction == "none" else tuple(t.shape[:1]) if reduction == "rows" else ()

    return shape


def grad(of: str, *, like: str | None = None, when: str = "with_grad") -> Callable[[SimpleNamespace], tuple[int, ...]]:
    """A gradient written in forward: the shape of ``like`` (default ``of``) when the flag(s)
    ``when`` ('a and b') are set and ``of`` is given, else an empty placeholder ``(0,)``."""
    flags = when.split(" and ")

    def shape(a: SimpleNamespace) -> tuple[int, ...]:
        t = getattr(a, of)
        if t is None or not all(getattr(a, f) for f in flags):
            return (0,)
        return tuple(getattr(a, like or of).shape)

    return shape


def summed_output(name: str, shape: Callable[[SimpleNamespace], tuple[int, ...]]) -> Output:
    return Output(name, shape, summed=lambda a: True)


def value(main: str) -> Output:
    """A loss value (:func:`reduced`): a sum, elementwise only for 'none'."""
    return Output("out", reduced(main), summed=lambda a: getattr(a, "reduction", "sum") != "none")


_REDUCED_SCALARS = (Scalar("reduction", "str"), Scalar("scale", "float"), Scalar("with_grad", "bool"))

# --- the ops -------------------------------------------------------------------------------------

REPARAMETERIZE_KL = Op(
    name="reparameterize_kl",
    kind="sample",
    tensors=(
        Tensor_("mu", differentiable=True),
        Tensor_("logvar", differentiable=True),
        Tensor_("eps", optional=True),
        Tensor_("seed", SEED, optional=True),
    ),
    scalars=(Scalar("samples", "int"), Scalar("log_weights", "bool"), Scalar("with_kl", "bool")),
    outputs=(
        Output("z", lambda a: (a.samples, *a.mu.shape)),
        summed_output("kl", lambda a: tuple(a.mu.shape[:1]) if a.with_kl else (0,)),
        summed_output("log_q", lambda a: (a.samples, a.mu.shape[0]) if a.log_weights else (0,)),
        summed_output("log_p", lambda a: (a.samples, a.mu.shape[0]) if a.log_weights else (0,)),
    ),
    main="mu",
    float32_under_autocast=False,  # elementwise, as torch's exp/mul/add: no autocast rule
    native="autograd_reparameterize",
    entry_scalars=("samples",),
    doc="""Eq. (4) and Appendix B in one pass: ``z = mu + exp(0.5 logvar) eps`` for ``samples`` draws,
    ``KL = 0.5 sum_j (mu^2 + exp(logvar) - 1 - logvar)``, and ``log q(z|x)``, ``log p(z)``.
    mu, logvar ``(R, J)`` -> z ``(samples, R, J)``, kl ``(R,)`` (``(0,)`` without ``with_kl``),
    log_q / log_p ``(samples, R)`` (``(0,)`` without ``log_weights``). eps is
    ``randn(seed, flat index)`` (Philox) unless given, regenerated in backward, never stored.""",
)

GAUSSIAN_KL = Op(
    name="gaussian_kl",
    kind="loss",
    tensors=(Tensor_("mu", differentiable=True), Tensor_("logvar", differentiable=True)),
    scalars=_REDUCED_SCALARS,
    outputs=(value("mu"), Output("grad_mu", grad("mu")), Output("grad_logvar", grad("logvar"))),
    main="mu",
    entry_scalars=("reduction", "scale"),
    doc="""Appendix B: ``scale * 0.5 sum_j (mu^2 + exp(logvar) - 1 - logvar)`` per row ('rows') or in
    total ('sum'); gradients ``scale * mu`` and ``scale * 0.5 (exp(logvar) - 1)``.""",
)

_BERNOULLI_TENSORS = (
    Tensor_("x", TARGET, differentiable=True),
    Tensor_("weight", FACTOR, optional=True),
)

BERNOULLI_LOG_LIKELIHOOD = Op(
    name="bernoulli_log_likelihood",
    kind="loss",
    tensors=(
        Tensor_("logits", differentiable=True),
        *_BERNOULLI_TENSORS,
        Tensor_("pos_weight", FACTOR, optional=True),
    ),
    scalars=(*_REDUCED_SCALARS, Scalar("target_grad", "bool")),
    outputs=(
        value("logits"),
        Output("grad_logits", grad("logits")),
        Output("grad_x", grad("x", like="logits", when="with_grad and target_grad")),
    ),
    main="logits",
    entry_scalars=("reduction", "scale"),
    doc="""Appendix C.1 from logits: ``scale * sum_d (x_d l_d - softplus(l_d))`` per element ('none'),
    row or in total; gradients ``scale * (x - sigmoid(l))`` and, with ``target_grad``,
    ``d/dx = scale * l``. With ``weight`` w and ``pos_weight`` q (``(R, D)`` views, torch's BCE
    factors): ``w ((1 + (q - 1) x) logsigmoid(l) - (1 - x) l)``. logits ``(R, D)``, targets ``(B, D)``
    (float in [0, 1], uint8 or bool); row r uses target row ``r % B``.""",
)

BERNOULLI_PROBS_LOG_LIKELIHOOD = Op(
    name="bernoulli_probs_log_likelihood",
    kind="loss",
    tensors=(Tensor_("probs", differentiable=True), *_BERNOULLI_TENSORS),
    scalars=(*_REDUCED_SCALARS, Scalar("target_grad", "bool")),
    outputs=(
        value("probs"),
        Output("grad_probs", grad("probs")),
        Output("grad_x", grad("x", like="probs", when="with_grad and target_grad")),
    ),
    main="probs",
    entry_scalars=("reduction", "scale"),
    doc="""Appendix C.1 from probabilities, as ``-F.binary_cross_entropy``:
    ``scale * sum_d w_d (x max(log p, -100) + (1 - x) max(log(1 - p), -100))``; gradients
    ``scale * w (x - p) / max(p (1 - p), 1e-12)`` and, with ``target_grad``, ``scale * w logit(p)``.""",
)

GAUSSIAN_LOG_LIKELIHOOD = Op(
    name="gaussian_log_likelihood",
    kind="loss",
    tensors=(Tensor_("x"), Tensor_("mean", differentiable=True), Tensor_("logvar", differentiable=True)),
    scalars=_REDUCED_SCALARS,
    outputs=(
        value("mean"),
        Output("grad_mean", grad("mean")),
        Output("grad_logvar", grad("logvar")),
    ),
    main="mean",
    entry_scalars=("reduction", "scale"),
    doc="""Appendix C.2: ``scale * -0.5 sum_d (log 2pi + v_d + (x_d - m_d)^2 exp(-v_d))`` per row or in
    total; ``logvar`` is ``mean``'s shape or ``(1,)`` (shared). Gradients ``d/dm = (x - m) exp(-v)``,
    ``d/dv = -0.5 (1 - (x - m)^2 exp(-v))`` (summed when shared).""",
)

ERROR_LOG_LIKELIHOOD = Op(
    name="error_log_likelihood",
    kind="loss",
    tensors=(Tensor_("x"), Tensor_("mean", differentiable=True), Tensor_("log_scale", differentiable=True)),
    scalars=(*_REDUCED_SCALARS, Scalar("power", "int")),
    outputs=(
        value("mean"),
        Output("grad_mean", grad("mean")),
        Output("grad_log_scale", grad("log_scale")),
    ),
    main="mean",
    entry_scalars=("reduction", "scale", "power"),
    doc="""The decoders of the torch-style VAE losses, ``F.mse_loss`` (``power`` 2) and ``F.l1_loss``
    (``power`` 1) with an optional learned log-scale s (latent diffusion's ``|x - m| / exp(s) + s``):
    ``scale * -sum_d (|x_d - m_d|^p exp(-s_d) + s_d)`` per element, row or in total, the log-density
    of a Gaussian (p = 2, variance exp(s) / 2) or Laplace (p = 1, scale exp(s)) decoder up to a
    constant; ``log_scale`` is ``mean``'s shape or ``(1,)`` (shared). Gradients
    ``d/dm = p |x - m|^(p-1) sign(x - m) exp(-s)``, ``d/ds = |x - m|^p exp(-s) - 1`` (summed when shared).""",
)

SGVB_LOSS = Op(
    name="sgvb_loss",
    kind="loss",
    tensors=(
        Tensor_("decoded", differentiable=True),
        Tensor_("x", TARGET),
        Tensor_("decoder_logvar", optional=True, differentiable=True),
        Tensor_("mu", differentiable=True),
        Tensor_("logvar", differentiable=True),
        Tensor_("kl_weight", SCALE, optional=True, scales="kl_scale"),
        Tensor_("kl_threshold", SCALE, optional=True, scales="kl_threshold_scale"),
    ),
    scalars=(
        Scalar("likelihood", "str"),
        Scalar("kl_scale", "float"),
        Scalar("ll_scale", "float"),
        Scalar("kl_form", "str"),
        Scalar("kl_threshold_scale", "float"),
        Scalar("with_grad", "bool"),
    ),
    outputs=(
        summed_output("out", lambda a: ()),
        Output("grad_decoded", grad("decoded")),
        Output("grad_decoder_logvar", grad("decoder_logvar")),
        Output("grad_mu", grad("mu")),
        Output("grad_logvar", grad("logvar")),
    ),
    main="decoded",
    native="autograd_sgvb_loss",
    entry_scalars=("likelihood", "kl_scale", "ll_scale"),
    optional_entries=True,
    composite_scalars=("kl_form", "kl_threshold_scale"),
    doc="""The negative ELBO of eq. (10) in one call: ``w kl_scale * sum_r KL_r - ll_scale * sum_r
    log p(x_r|z_r)`` with the KL of Appendix B and the decoder of Appendix C (``likelihood``:
    'bernoulli' (logits), 'bernoulli_probs', 'gaussian' with ``decoder_logvar`` of ``decoded``'s
    shape or one value, 'mse' and 'l1' (error_log_likelihood with power 2 and 1) with
    ``decoder_logvar`` holding their log-scale s, zeros(1) when none is learned), w the 0-d
    ``kl_weight`` (1 when None: a weight that changes every step, e.g. KL annealing);
    with ``with_grad`` its gradients in the same pass. decoded ``(R, D)``,
    x ``(B, D)``, mu / logvar ``(B, J)``.

    ``kl_form`` other than 'kl' replaces ``sum_r KL_r`` by a thresholded KL term, with t =
    ``kl_threshold_scale`` times the 0-d ``kl_threshold`` (1 when None: a capacity that grows
    every step): 'capacity' ``|sum_r KL_r - t|`` (Burgess et al.'s ``gamma |KL - C|``),
    'capacity_datapoint' ``sum_r |KL_r - t|``, 'free_bits' ``sum_j max(sum_r KL_rj, t)`` (Kingma et
    al. 2016), each times ``w kl_scale``; their KL gradients are the plain ones times the sign of
    ``KL - t`` (0 at equality, as ``abs``) or the indicator of ``sum_r KL_rj >= t`` (as ``clamp``).
    ``ops.calls`` applies them around the KL entry's rows (``KL_FORMS``); the backends' fused
    entries and the C++ node take the plain form only.""",
)


def _direct(name: str) -> Callable[[SimpleNamespace], tuple[int, ...]]:
    """The IWAE gradient's direct term of ``mu`` / ``logvar`` (from ``log q``'s parameters): STL and
    DReG hold them fixed, so only the path through z moves them (a placeholder ``(0,)``)."""
    wanted = grad(name)
    return lambda a: wanted(a) if a.gradient == "iwae" else (0,)


IWAE_LOSS = Op(
    name="iwae_loss",
    kind="loss",
    tensors=(
        Tensor_("decoded", differentiable=True),
        Tensor_("x", TARGET),
        Tensor_("decoder_logvar", optional=True, differentiable=True),
        Tensor_("z", differentiable=True),
        Tensor_("mu", differentiable=True),
        Tensor_("logvar", differentiable=True),
        Tensor_("gate", TOKEN, optional=True, differentiable=True),
    ),
    scalars=(Scalar("likelihood", "str"), Scalar("gradient", "str"), *_REDUCED_SCALARS),
    outputs=(
        summed_output("out", reduced("mu")),
        Output("grad_decoded", grad("decoded")),
        Output("grad_decoder_logvar", grad("decoder_logvar")),
        Output("grad_z", grad("z")),
        Output("grad_mu", _direct("mu")),
        Output("grad_logvar", _direct("logvar")),
        Output("grad_gate", grad("gate")),
    ),
    main="decoded",
    entry_scalars=("likelihood", "gradient", "reduction", "scale"),
    optional_entries=True,  # without them ops.calls builds the op from the decoder op's entries
    doc="""The negative importance-weighted bound of Burda et al. (2016), ``-scale * (logsumexp_k
    log w_k - log K)`` per datapoint ('rows') or in total ('sum'), ``log w_k = log p(x|z_k) +
    log p(z_k) - log q(z_k|x)`` for the K samples z ``(K, B, J)`` of q = N(mu, exp(logvar)), with
    the decoder ``likelihood`` of ``sgvb_loss`` on decoded ``(K B, D)`` (row ``k B + b``), x ``(B, D)``.
    With ``w~ = softmax_k log w_k``: ``d/d decoded_k = -scale w~_k d log p(x|z_k)``, ``d/dz_k = -scale
    w~_k ((z_k - mu) exp(-logvar) - z_k)``; ``gradient`` 'iwae' adds the direct terms of log q's
    parameters, ``d/dmu = -scale sum_k w~_k (mu - z_k) exp(-logvar)`` and ``d/dlogvar = -scale
    sum_k w~_k 0.5 (1 - (z_k - mu)^2 exp(-logvar))``; 'stl' (Roeder et al. 2017) and 'dreg'
    (Tucker et al. 2019) drop them. The ``gate`` token ``(K, B)`` gets ``scale w~`` back, which
    ``functional.dreg_gate`` normalizes and multiplies into the gradient of z once more: DReG's
    ``w~_k^2``. The fused entries (cpp, triton, numba: one pass per datapoint) compute it whole;
    elsewhere (torch) ``ops.calls`` builds it from the decoder op's rows and backward (two passes
    over the decoder output) and torch ops on the ``(K, B, J)`` latents.""",
)

OPS: dict[str, Op] = {
    op.name: op
    for op in (
        REPARAMETERIZE_KL,
        GAUSSIAN_KL,
        BERNOULLI_LOG_LIKELIHOOD,
        BERNOULLI_PROBS_LOG_LIKELIHOOD,
        GAUSSIAN_LOG_LIKELIHOOD,
        ERROR_LOG_LIKELIHOOD,
        SGVB_LOSS,
        IWAE_LOSS,
    )
}
LIKELIHOODS = ("bernoulli", "bernoulli_probs", "gaussian", "mse", "l1")
# The encoder gradient of iwae_loss (IWAE_LOSS's gradient): the bound's own, sticking the landing, DReG.
IWAE_GRADIENTS = ("iwae", "stl", "dreg")
# The KL term of sgvb_loss (SGVB_LOSS's kl_form): the plain KL, the two capacity forms, free bits.
KL_FORMS = ("kl", "capacity", "capacity_datapoint", "free_bits")
# The power p of the error likelihoods (ERROR_LOG_LIKELIHOOD): squared error, absolute error.
ERROR_POWERS = {"mse": 2, "l1": 1}
# The decoder op of each sgvb_loss likelihood (the composite path of backends without the fused entry).
DECODER_OPS = {
    "bernoulli": BERNOULLI_LOG_LIKELIHOOD,
    "bernoulli_probs": BERNOULLI_PROBS_LOG_LIKELIHOOD,
    "gaussian": GAUSSIAN_LOG_LIKELIHOOD,
    "mse": ERROR_LOG_LIKELIHOOD,
    "l1": ERROR_LOG_LIKELIHOOD,
}
