"""The CUDA code path of the Triton backend, checked where it can be without a GPU.

Under ``TRITON_INTERPRET=1`` the launchers run on CPU tensors. ``_common.device_checks = True``
makes them take the CUDA branch (the range check reports through the finish kernel's
device-side assert, never read on the host); seeds are passed as tensors as ``calls._seed``
does for a seed drawn on a CUDA device. The entry points are called with their outputs given
(docs/backends.md). The tests marked ``cuda`` run only where a GPU is.
"""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastaevb
import fastaevb.functional as F

pytest.importorskip("triton")
if "triton" not in fastaevb.available_backends():
    pytest.skip("the triton backend is not available", allow_module_level=True)

from fastaevb import backends
from fastaevb.ops import calls, rules, seeds

kernels = backends.kernels("triton")
common = kernels._common
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
interpreted = pytest.mark.skipif(torch.cuda.is_available(), reason="emulates the CUDA path on CPU tensors")

# aten ops that launch no device kernel (allocation, views, metadata)
_NO_LAUNCH = {
    "empty",
    "empty_like",
    "new_empty",
    "empty_strided",
    "view",
    "_unsafe_view",
    "reshape",
    "detach",
    "alias",
    "as_strided",
    "expand",
    "select",
    "slice",
    "unsqueeze",
    "squeeze",
    "permute",
    "t",
    "lift_fresh",
    "_reshape_alias",
    "set_",
}
_SYNCS = {"_local_scalar_dense", "item", "_to_copy_cpu"}


class _Launches(TorchDispatchMode):
    """Records every aten op that launches device work, and every Triton launch (by hook)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in _NO_LAUNCH:
            self.ops.append(f"aten.{name}")
        return func(*args, **(kwargs or {}))

    def hook(self, kernel):
        self.ops.append(f"triton.{kernel.fn.__name__ if hasattr(kernel, 'fn') else kernel.__name__}")

    def __enter__(self):
        common.launch_hooks.append(self.hook)
        if not torch.cuda.is_available():  # the interpreter's own host copies are not launches
            from torch.utils._python_dispatch import _disable_current_modes
            from triton.runtime.interpreter import InterpretedFunction

            self._run = InterpretedFunction.run

            def run(fn, *args, _run=self._run, **kwargs):
                with _disable_current_modes():
                    return _run(fn, *args, **kwargs)

            InterpretedFunction.run = run
        return super().__enter__()

    def __exit__(self, *exc):
        common.launch_hooks.remove(self.hook)
        if not torch.cuda.is_available():
            from triton.runtime.interpreter import InterpretedFunction

            InterpretedFunction.run = self._run
        return super().__exit__(*exc)


@pytest.fixture
def cuda_path(monkeypatch):
    """The launchers' CUDA branch on the interpreter: device-side range reports, tensor seeds
    (as ``calls._seed`` passes a seed drawn on a CUDA device), and no ``upstream is 1`` shortcut
    (it reads the upstream value, which only the CPU may do for free)."""
    monkeypatch.setattr(common, "device_checks", None if torch.cuda.is_available() else True)
    if not torch.cuda.is_available():
        monkeypatch.setattr(calls, "_seed", lambda seed: 0 if seed is None else seed)
        monkeypatch.setattr(rules, "upstream_is_one", lambda grad_out: False)
    with fastaevb.use_backend("triton"):
        yield


def _step(likelihood: str, B: int = 6, J: int = 5):
    """reparameterize + SGVBLoss forward and backward; the decoder is the identity (D = J), so
    every launch counted is fastaevb's or the autograd engine's."""
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(B, J, generator=gen).to(DEVICE).requires_grad_()
    logvar = torch.randn(B, J, generator=gen).to(DEVICE).requires_grad_()
    x = torch.rand(B, J, generator=gen).to(DEVICE)
    if likelihood == "bernoulli_probs":
        x = x.round()
    criterion = fastaevb.SGVBLoss(likelihood)
    upstream = torch.ones((), device=DEVICE)
    return mu, logvar, x, criterion, upstream


def _run_step(mu, logvar, x, criterion, upstream, likelihood):
    z = F.reparameterize(mu, logvar)
    recon = torch.sigmoid(z) if likelihood == "bernoulli_probs" else z
    loss = criterion(recon, x, mu, logvar)
    loss.backward(upstream)
    return loss


# Measured at 57fb46e (issue 7): 18 launches and 1 host sync for the Bernoulli step on CUDA.
EXPECTED_BERNOULLI = [
    "aten.randint",  # the seed, drawn on the device (graph-safe)
    "triton.reparameterize_kl_fwd_kernel",  # z (no KL: the loss computes it)
    "triton.bernoulli_log_likelihood_fwd_kernel",  # decoder rows and KL rows, gradients written in the same pass
    "triton.finish_kernel",  # fixed-order sum of both row sets, range check reported on the device
    "aten._foreach_mul_",  # gradients times the upstream gradient, in place: one launch for all of them
    "triton.reparameterize_kl_bwd_kernel",  # dz -> dmu, dlogvar (eps regenerated)
]
# The autograd engine adds the two gradients each of mu and logvar receive (from the loss and from z).
ENGINE = ["aten.add", "aten.add"]


@interpreted
def test_launches_of_reparameterize_and_sgvb_loss(cuda_path):
    mu, logvar, x, criterion, upstream = _step("bernoulli")
    _run_step(mu, logvar, x, criterion, upstream, "bernoulli")  # first call: caches (a zero for absent grads)
    mu.grad = logvar.grad = None
    with _Launches() as rec:
        _run_step(mu, logvar, x, criterion, upstream, "bernoulli")
    own = [op for op in rec.ops if op != "aten.add"]
    assert own == EXPECTED_BERNOULLI, rec.ops
    assert len(own) <= 6
    assert sorted(op for op in rec.ops if op == "aten.add") == ENGINE
    assert not any(op.split(".")[1] in _SYNCS for op in rec.ops), rec.ops


@interpreted
@pytest.mark.parametrize("likelihood", ["bernoulli_probs", "gaussian"])
def test_launches_other_likelihoods(cuda_path, likelihood):
    mu, logvar, x, criterion, upstream = _step(likelihood)
    _run_step(mu, logvar, x, criterion, upstream, likelihood)
    mu.grad = logvar.grad = None
    with _Launches() as rec:
        _run_step(mu, logvar, x, criterion, upstream, likelihood)
    own = [op for op in rec.ops if op not in ("aten.add", "aten.sigmoid", "aten.sigmoid_backward")]
    # gaussian: the default decoder log-variance is one shared zero (functional allocates it), and
    # its gradient is summed by one more finish launch
    limit = 6 if likelihood == "bernoulli_probs" else 8
    assert len(own) <= limit, rec.ops
    assert not any(op.split(".")[1] in _SYNCS for op in rec.ops), rec.ops


class _NoHostReads:
    """Fails any host read of a tensor value outside the interpreter's own machinery."""

    METHODS = ("item", "tolist", "cpu", "numpy", "__int__", "__float__", "__bool__", "__index__")

    def __init__(self, monkeypatch):
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._guard(name, original))

    @staticmethod
    def _guard(name, original):
        def guarded(self, *args, **kwargs):
            frame = sys._getframe(1)
            while frame is not None:
                if "triton/runtime/interpreter" in frame.f_code.co_filename.replace("\\", "/"):
                    return original(self, *args, **kwargs)
                frame = frame.f_back
            raise AssertionError(f"host read of a tensor value: Tensor.{name}")

        return guarded


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0)


def _value_out(like: torch.Tensor, reduction: str) -> torch.Tensor:
    """The op's value as the op layer allocates it: elementwise, per row or 0-d (float32 values)."""
    if reduction == "none":
        return torch.empty_like(like)
    return torch.empty((like.shape[0],) if reduction == "rows" else (), dtype=torch.float32, device=like.device)


def _grads(*likes: torch.Tensor, wanted: bool = True) -> tuple[torch.Tensor, ...]:
    return tuple(torch.empty_like(t) if wanted else _empty(t) for t in likes)


@interpreted
def test_no_host_reads_in_the_launchers(cuda_path, monkeypatch):
    gen = torch.Generator().manual_seed(1)
    R, B, D, J, L = 8, 4, 20, 5, 3
    logits = torch.randn(R, D, generator=gen)
    probs = torch.rand(R, D, generator=gen)
    x = torch.rand(B, D, generator=gen)
    xb = x > 0.5
    mean, lv = torch.randn(R, D, generator=gen), torch.randn(R, D, generator=gen)
    shared = lv[:1, :1].reshape(1).clone()
    mu, v = torch.randn(B, J, generator=gen), torch.randn(B, J, generator=gen)
    seed = torch.tensor(12345, dtype=torch.int64)
    go_total = torch.tensor(1.5)
    _NoHostReads(monkeypatch)
    for reduction in ("none", "rows", "sum"):
        summed = reduction == "sum"
        kernels.bernoulli_log_likelihood_forward(
            _value_out(logits, reduction),
            *_grads(logits, logits, wanted=summed),
            logits,
            x,
            None,
            None,
            reduction,
            -1.0,
        )
        kernels.bernoulli_probs_log_likelihood_forward(
            _value_out(probs, reduction), *_grads(probs, wanted=summed), _empty(probs), probs,
            xb.view(torch.uint8), None, reduction, -1.0,
        )  # fmt: skip
    kernels.bernoulli_log_likelihood_backward(
        *_grads(logits), _empty(logits), go_total, logits, x, None, None, "sum", -1.0
    )
    for reduction in ("rows", "sum"):
        summed = reduction == "sum"
        kernels.gaussian_log_likelihood_forward(
            _value_out(mean, reduction), *_grads(mean, lv, wanted=summed), x, mean, lv, reduction, 0.5
        )
        kernels.gaussian_log_likelihood_forward(
            _value_out(mean, reduction), *_grads(mean, shared, wanted=summed), x, mean, shared, reduction, 0.5
        )
        kernels.gaussian_kl_forward(_value_out(mu, reduction), *_grads(mu, v, wanted=summed), mu, v, reduction, 0.25)
    kernels.gaussian_log_likelihood_backward(*_grads(mean, shared), go_total, x, mean, shared, "sum", 0.5)
    z, kl = torch.empty(L, B, J), torch.empty(B)
    lq, lp = torch.empty(L, B), torch.empty(L, B)
    kernels.reparameterize_kl_forward(z, kl, lq, lp, mu, v, None, seed, L)
    kernels.reparameterize_kl_backward(
        *_grads(mu, v), torch.ones_like(z), None, torch.ones_like(lq), None, mu, v, None, seed, L
    )
    mu2, v2 = mu.repeat(2, 1), v.repeat(2, 1)
    for likelihood in ("bernoulli", "bernoulli_probs", "gaussian"):
        grad_dv = torch.empty_like(lv) if likelihood == "gaussian" else _empty(lv)
        kernels.sgvb_loss_forward(
            torch.empty(()),
            torch.empty_like(probs),
            grad_dv,
            *_grads(mu2, v2),
            probs,
            x,
            lv,
            mu2,
            v2,
            likelihood,
            1.0,
            1.0,
        )
    kernels.randn(seed, torch.arange(10))


@interpreted
def test_out_of_range_is_counted_and_asserted_on_the_device(cuda_path, monkeypatch):
    """On the CUDA path the count never reaches the host; the finish kernel's device-side assert
    (kept by ``debug=True``) names the argument. The interpreter drops device asserts unless its
    options say debug, as a compiled kernel does for ``debug=True``."""
    from triton.runtime import interpreter
    from triton.runtime.errors import InterpreterError

    x = torch.tensor([[0.0, 2.0], [1.0, 0.5]])
    probs = torch.tensor([[0.5, 0.5], [1.5, 0.5]])
    kernels.bernoulli_probs_log_likelihood_forward(
        torch.empty(()), _empty(x), _empty(x), probs, x, None, "sum", -1.0
    )  # no host read: no raise
    monkeypatch.setattr(
        interpreter.interpreter_builder,
        "options",
        dataclasses.replace(interpreter.interpreter_builder.options, debug=True),
    )
    with pytest.raises(InterpreterError, match=r"input \(probs\) must lie in \[0, 1\]"):
        kernels.bernoulli_probs_log_likelihood_forward(
            torch.empty(()), _empty(x), _empty(x), probs, x, None, "sum", -1.0
        )
    with pytest.raises(InterpreterError, match=r"target \(x\) must lie in \[0, 1\]"):
        kernels.bernoulli_log_likelihood_forward(
            torch.empty(2), _empty(x), _empty(x), probs, x, None, None, "rows", -1.0
        )
    clamped = x.clamp(0, 1)  # in range: passes
    kernels.bernoulli_log_likelihood_forward(
        torch.empty(2, 2), _empty(x), _empty(x), probs, clamped, None, None, "none", -1.0
    )


def test_cpu_path_still_raises_value_error():
    """On CPU tensors the launcher reads the finish kernel's count (free there) and raises."""
    with fastaevb.use_backend("triton"):
        x = torch.tensor([[0.0, 2.0]]).to(DEVICE)
        if DEVICE == "cpu":
            logits = torch.zeros(1, 2)
            with pytest.raises(ValueError, match=r"target \(x\) must lie in \[0, 1\].*found 1 value"):
                kernels.bernoulli_log_likelihood_forward(
                    torch.empty(()), _empty(x), _empty(x), logits, x, None, None, "sum", -1.0
                )


def test_kernels_read_the_seed_from_a_tensor():
    offsets = torch.arange(0, 3000, 7, dtype=torch.int64)
    for seed in (0, 1, 2**40 + 3, 2**63 - 1):
        from_int = kernels.randn(seed, offsets)
        from_tensor = kernels.randn(torch.tensor(seed, dtype=torch.int64), offsets)
        torch.testing.assert_close(from_tensor, from_int, rtol=0, atol=0)
        for name in ("cpp", "numba"):
            if name in fastaevb.available_backends():
                # the CPU backends' float32 log/cos may differ from Triton's by an ulp (tests/test_noise.py)
                torch.testing.assert_close(backends.kernels(name).randn(seed, offsets), from_int, rtol=1e-5, atol=1e-5)
    mu, v = torch.randn(7, 20), torch.randn(7, 20)
    seed = 987654321
    z_int, z_tensor = torch.empty(2, 7, 20), torch.empty(2, 7, 20)
    kernels.reparameterize_kl_forward(z_int, *(_empty(mu) for _ in range(3)), mu, v, None, seed, 2)
    kernels.reparameterize_kl_forward(z_tensor, *(_empty(mu) for _ in range(3)), mu, v, None, torch.tensor(seed), 2)
    torch.testing.assert_close(z_tensor, z_int, rtol=0, atol=0)


def test_same_seed_same_eps_as_the_cpu_backends():
    """One seed (a CPU generator), the same eps on every backend: the Philox contract."""
    mu, v = torch.zeros(9, 20), torch.zeros(9, 20)  # z = eps
    results = {}
    for name in [n for n in ("cpp", "numba", "triton") if n in fastaevb.available_backends()]:
        with fastaevb.use_backend(name):
            results[name] = F.reparameterize(mu, v, samples=3, generator=torch.Generator().manual_seed(5))
    reference = results.pop("triton")
    for name, z in results.items():
        # float32 Philox + Box-Muller: the CPU backends' log/cos may differ by an ulp or two
        torch.testing.assert_close(z, reference, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_tiles_fit_the_width():
    assert common.data_tile(1)["BLOCK_D"] == 1 and common.data_tile(1)["BLOCK_R"] >= 512
    assert common.latent_tile(20)["BLOCK_D"] == 32  # J = 20: 62% of the lanes busy (was 31% of 64)
    assert common.latent_tile(200)["BLOCK_D"] == 64
    with pytest.raises(ValueError, match="at most"):
        common.check_width(2**31)


def test_draw_seed_stays_on_the_device_of_the_tensor():
    like = torch.zeros(1)
    seed = seeds.draw(None, like)
    assert seed.device.type == "cpu" and seed.dtype == torch.int64
    seed = seeds.draw(torch.Generator().manual_seed(0), like)
    assert seed.device.type == "cpu"


# --- on a GPU ------------------------------------------------------------------------------------


@needs_cuda
def test_cuda_seed_is_drawn_on_the_device():
    like = torch.zeros(1, device="cuda")
    assert seeds.draw(None, like).is_cuda
    assert seeds.draw(torch.Generator(device="cuda").manual_seed(0), like).is_cuda


@needs_cuda
def test_no_sync_on_cuda(cuda_path):
    mu, logvar, x, criterion, upstream = _step("bernoulli")
    _run_step(mu, logvar, x, criterion, upstream, "bernoulli")  # compile / warm up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _run_step(mu, logvar, x, criterion, upstream, "bernoulli")
    finally:
        torch.cuda.set_sync_debug_mode("default")


@needs_cuda
def test_cuda_graph_replay_draws_fresh_noise(cuda_path):
    mu = torch.zeros(64, 20, device="cuda")
    v = torch.zeros(64, 20, device="cuda")
    F.reparameterize(mu, v)  # warm up (compiles the kernel outside the capture)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        z = F.reparameterize(mu, v)
    graph.replay()
    first = z.clone()
    graph.replay()
    assert not torch.equal(first, z), "a replay reused the captured seed: frozen noise"


@needs_cuda
def test_reduce_overhead_draws_fresh_noise(cuda_path):
    mu = torch.zeros(64, 20, device="cuda")
    v = torch.zeros(64, 20, device="cuda")
    step = torch.compile(lambda m, s: F.reparameterize(m, s) * 1.0, mode="reduce-overhead", fullgraph=True)
    samples = [step(mu, v).clone() for _ in range(4)]
    assert not torch.equal(samples[-1], samples[-2])


@needs_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_device_guard(cuda_path):
    torch.cuda.set_device(0)
    logits = torch.randn(8, 16, device="cuda:1")
    x = torch.rand(8, 16, device="cuda:1")
    with fastaevb.use_backend("triton"):
        got = fastaevb.functional.bernoulli_log_likelihood(logits, x)
    want = fastaevb.functional.bernoulli_log_likelihood(logits.cpu(), x.cpu())
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-4)
