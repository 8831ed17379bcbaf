"""Autocast: the loss ops run in float32 under ``torch.autocast``, as torch's losses do
(policy table in ``fastaevb/ops/autocast.py``).

CPU autocast is run for real on every backend and both call paths. For CUDA, without a GPU,
only the dispatch is shown: the ``AutocastCUDA`` registrations, and on fake CUDA tensors
(``FakeTensorMode``, CUDA autocast switched on with ``torch.set_autocast_enabled``) the float32
outputs of the ops and the ``binary_cross_entropy`` refusal, side by side with torch's own ops
on the same fake tensors. No kernel runs on a GPU here.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as TF
from torch._subclasses.fake_tensor import FakeTensorMode

import fastaevb
from fastaevb import functional as F
from fastaevb.ops import autocast
from fastaevb.ops.table import OPS

HALF = [torch.bfloat16, torch.float16]


def _inputs(dtype, gen):
    recon = torch.randn(6, 12, generator=gen).to(dtype).requires_grad_()
    probs = torch.rand(6, 12, generator=gen).clamp(0.01, 0.99).to(dtype).requires_grad_()
    x = torch.rand(6, 12, generator=gen).to(dtype)
    mu, logvar = (torch.randn(6, 3, generator=gen).to(dtype).requires_grad_() for _ in range(2))
    return recon, probs, x, mu, logvar


CALLS = {
    "sgvb_loss": lambda r, p, x, m, v: F.sgvb_loss(r, x, m, v, likelihood="bernoulli"),
    "sgvb_loss_probs": lambda r, p, x, m, v: F.sgvb_loss(p, x, m, v, likelihood="bernoulli_probs"),
    "sgvb_loss_gaussian": lambda r, p, x, m, v: F.sgvb_loss(r, x, m, v, likelihood="gaussian", reduction="mean"),
    "gaussian_kl": lambda r, p, x, m, v: F.gaussian_kl(m, v, "none"),
    "bernoulli": lambda r, p, x, m, v: F.bernoulli_log_likelihood(r, x, "sum"),
    "bernoulli_probs": lambda r, p, x, m, v: F.bernoulli_probs_log_likelihood(p, x, "none"),
    "gaussian": lambda r, p, x, m, v: F.gaussian_log_likelihood(x, r, v.new_zeros(()), "mean"),
    "bce_with_logits": lambda r, p, x, m, v: F.binary_cross_entropy_with_logits(r, x, reduction="none"),
    "bce": lambda r, p, x, m, v: F.binary_cross_entropy(p, x),
}


@pytest.mark.parametrize("path", ["eager", "custom_op"])
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("call", CALLS)
def test_cpu_autocast_runs_the_losses_in_float32(backend, call, dtype, path):
    """Under CPU autocast each loss equals the same call on float32 copies (bit for bit: the
    op sees float32 inputs), comes back in float32, and its gradients reach the half inputs in
    their dtype. Checked on every backend, the pure-torch one included, and both call paths."""
    inputs = _inputs(dtype, torch.Generator().manual_seed(0))
    custom = fastaevb.ops.use_custom_ops() if path == "custom_op" else contextlib.nullcontext()
    with torch.autocast("cpu", dtype=dtype), custom:
        out = CALLS[call](*inputs)
    assert out.dtype == torch.float32
    expected = CALLS[call](*(t.detach().float().requires_grad_(t.requires_grad) for t in inputs))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out.sum().backward()
    for t in inputs:
        if t.requires_grad and t.grad is not None:
            assert t.grad.dtype == dtype


def test_cpu_autocast_matches_torch_losses():
    """torch's own choices on CPU, which the policy follows: float32 for both BCE forms."""
    logits = torch.randn(4, 5, dtype=torch.bfloat16)
    target = torch.rand(4, 5, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert TF.binary_cross_entropy_with_logits(logits, target).dtype == torch.float32
        assert TF.binary_cross_entropy(torch.sigmoid(logits), target).dtype == torch.float32
        assert F.binary_cross_entropy_with_logits(logits, target).dtype == torch.float32
        assert F.binary_cross_entropy(torch.sigmoid(logits), target).dtype == torch.float32


def test_autocast_lets_mixed_dtypes_through():
    """A bfloat16 decoder output with a float32 learned log-variance: fine under autocast (both
    float32 inside), a dtype error outside it, as before."""
    mean, x = torch.randn(4, 6, dtype=torch.bfloat16), torch.randn(4, 6)
    logvar = torch.zeros((), requires_grad=True)
    with pytest.raises(TypeError, match="logvar must have the dtype of mean"):
        F.gaussian_log_likelihood(x, mean, logvar)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.gaussian_log_likelihood(x, mean, logvar, "sum").dtype == torch.float32


def test_reparameterize_is_not_cast(kernel_backend):
    """No autocast rule: z keeps the half dtype, the KL rows are float32 (as without autocast)."""
    mu, logvar = torch.randn(3, 4, dtype=torch.bfloat16), torch.randn(3, 4, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, kl = F.reparameterize_kl(mu, logvar)
    assert z.dtype == torch.bfloat16 and kl.dtype == torch.float32


@pytest.mark.parametrize("device_type", autocast.DEVICE_TYPES)
@pytest.mark.parametrize("name", [name for name, op in OPS.items() if op.float32_under_autocast])
def test_custom_ops_have_autocast_kernels(name, device_type):
    key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastaevb::{name}", key)
    assert not torch._C._dispatch_has_kernel_for_dispatch_key("fastaevb::reparameterize_kl", key)


def test_custom_op_called_directly_under_cpu_autocast():
    """``torch.ops.fastaevb.*`` without ``functional``: the registered rule casts."""
    mu, logvar = torch.randn(5, 3, dtype=torch.bfloat16), torch.randn(5, 3, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kl, *_ = torch.ops.fastaevb.gaussian_kl(mu, logvar, "rows", 1.0, False)
    assert kl.dtype == torch.float32
    expected, *_ = torch.ops.fastaevb.gaussian_kl(mu.float(), logvar.float(), "rows", 1.0, False)
    torch.testing.assert_close(kl, expected, rtol=0, atol=0)


@contextlib.contextmanager
def _cuda_autocast_on_fake_tensors():
    """CUDA autocast switched on (``torch.autocast('cuda')`` disables itself without CUDA) around
    a ``FakeTensorMode`` in which CUDA tensors can be made without a GPU."""
    previous = torch.is_autocast_enabled("cuda")
    torch.set_autocast_enabled("cuda", True)
    try:
        with FakeTensorMode():
            yield
    finally:
        torch.set_autocast_enabled("cuda", previous)


def test_cuda_autocast_dispatch_on_fake_tensors():
    """The dispatch only (fake tensors, no kernel runs): under CUDA autocast the fastaevb ops give
    float32 from float16 CUDA inputs, as torch's BCE-with-logits does on the same tensors."""
    with _cuda_autocast_on_fake_tensors():
        logits = torch.empty(4, 6, device="cuda", dtype=torch.float16)
        target = torch.empty(4, 6, device="cuda", dtype=torch.float16)
        assert TF.binary_cross_entropy_with_logits(logits, target).dtype == torch.float32
        kl, grad_mu, grad_logvar = torch.ops.fastaevb.gaussian_kl(logits, target, "sum", 1.0, True)
        assert kl.dtype == grad_mu.dtype == grad_logvar.dtype == torch.float32  # inputs cast first
        with fastaevb.ops.use_custom_ops():  # functional's own cast, through the op's fake kernel
            assert F.binary_cross_entropy_with_logits(logits, target).dtype == torch.float32
            assert F.gaussian_kl(logits, target).dtype == torch.float32


def test_bce_refused_under_cuda_autocast_as_torch_does():
    """On fake CUDA tensors under CUDA autocast, torch's binary_cross_entropy raises; so does the
    drop-in, before any kernel (and the logits form does not)."""
    with _cuda_autocast_on_fake_tensors():
        probs = torch.empty(4, 6, device="cuda", dtype=torch.float16)
        with pytest.raises(RuntimeError, match="unsafe to autocast"):
            TF.binary_cross_entropy(probs, probs)
        with pytest.raises(RuntimeError, match="unsafe to autocast"):
            F.binary_cross_entropy(probs, probs)
    # CPU tensors under CUDA autocast: torch's rule is per device, and so is ours
    torch.set_autocast_enabled("cuda", True)
    try:
        p = torch.full((3,), 0.5, dtype=torch.float16)
        assert F.binary_cross_entropy(p, p).dtype == torch.float32
    finally:
        torch.set_autocast_enabled("cuda", False)


def test_compiled_step_under_cpu_autocast():
    """torch.compile(fullgraph=True) of a bfloat16-autocast VAE step: no graph break, a float32
    loss equal to eager's under the same autocast."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    encoder, decoder = torch.nn.Linear(12, 6), torch.nn.Linear(3, 12)
    x = (torch.rand(5, 12) > 0.5).float()

    def step(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mu, logvar = encoder(x).chunk(2, dim=-1)
            z = F.reparameterize(mu, logvar, eps=torch.ones_like(mu))
            return fastaevb.SGVBLoss("bernoulli")(decoder(z), x, mu, logvar)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(x)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, step(x))
    assert torch._dynamo.explain(step)(x).graph_break_count == 0
