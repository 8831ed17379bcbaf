"""Run as a script (by ``test_triton_op.py``, without ``TRITON_INTERPRET``): trace every fastaevb
op on fake CUDA tensors through AOTAutograd's functionalization, as ``torch.compile`` does, and
print, per op, the Triton kernels the graph holds and the arguments each kernel writes
(``python tests/fake_cuda_trace.py cpu``: the same on fake CPU tensors;
``python tests/fake_cuda_trace.py entries``: the Triton backend's entry points traced directly,
outputs allocated as the op layer gives them, no op layer in between).

No GPU is needed or used: ``FakeTensorMode`` makes CUDA tensors without one, and the kernels are
recorded (``triton_kernel_wrapper_functional``), never run. torch's analysis of which arguments
a kernel writes lowers it to TTIR for the current target, so the Triton driver is given an sm_90
target (nothing else of the driver is asked for).
"""

from __future__ import annotations

import json
import logging
import sys

import torch
import triton
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
from torch._subclasses.fake_tensor import FakeTensorMode
from torch._subclasses.functional_tensor import dispatch_functionalize
from torch.fx.experimental.proxy_tensor import make_fx
from triton.backends.compiler import GPUTarget

import fastaevb
from fastaevb import functional as F


class _Sm90:
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


def _kernel_name(index: int) -> str:
    kernel = kernel_side_table.get_kernel(index)
    while not isinstance(kernel, triton.JITFunction):  # num_warps wraps it in a one-config autotuner
        kernel = kernel.fn
    return kernel.fn.__name__


def _metadata(outputs) -> list:
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    return [[list(o.shape), str(o.dtype), str(o.device)] for o in outputs]


def _calls(t):
    """name -> (call, its tensors): the tensors are passed to make_fx, not captured. Forward
    steps through ``functional`` on the custom-op path (what ``torch.compile`` runs); backward ops
    directly (the autograd engine cannot run on fake CUDA tensors in a CPU-only torch); the decoder
    backward kernels through ``sgvb_loss_backward``."""
    ops = torch.ops.fastaevb
    recon, probs, x, mu, logvar = (t[k] for k in ("recon", "probs", "x", "mu", "logvar"))
    seed, rows, one, shared = (t[k] for k in ("seed", "rows", "one", "shared"))

    def loss(likelihood, reduction="sum"):
        return lambda r, x, m, v: F.sgvb_loss(r, x, m, v, likelihood=likelihood, reduction=reduction)

    return {
        "sgvb_loss": (loss("bernoulli"), (recon, x, mu, logvar)),
        "sgvb_loss_gaussian": (loss("gaussian", "mean"), (recon, x, mu, logvar)),
        "binary_cross_entropy_with_logits": (F.binary_cross_entropy_with_logits, (recon, x)),
        "binary_cross_entropy": (F.binary_cross_entropy, (probs, x)),
        "reparameterize_kl": (lambda m, v: F.reparameterize_kl(m, v, samples=2, return_log_weights=True), (mu, logvar)),
        "gaussian_kl": (lambda m, v: F.gaussian_kl(m, v, "none"), (mu, logvar)),
        "gaussian_log_likelihood": (lambda x, r, s: F.gaussian_log_likelihood(x, r, s, "sum"), (x, recon, shared)),
        "sgvb_loss_backward": (
            lambda g, r, x, m, v: ops.sgvb_loss_backward(
                g, r, x, None, m, v, None, None, "bernoulli", 1.0, 1.0, "kl", 0.0
            ),
            (one, recon, x, mu, logvar),
        ),
        "sgvb_loss_backward_gaussian": (
            lambda g, r, x, s, m, v: ops.sgvb_loss_backward(
                g, r, x, s, m, v, None, None, "gaussian", 1.0, 1.0, "kl", 0.0
            ),
            (one, recon, x, shared, mu, logvar),
        ),
        "reparameterize_kl_backward": (
            lambda z, m, v, s: ops.reparameterize_kl_backward(z, None, None, None, m, v, None, s, 2),
            (t["z"], mu, logvar, seed),
        ),
        "gaussian_kl_backward": (lambda g, m, v: ops.gaussian_kl_backward(g, m, v, "rows", 1.0), (rows, mu, logvar)),
        # half inputs: the summed outputs are float32 in the launchers as in the fake kernels
        "gaussian_kl_bf16": (lambda m, v: F.gaussian_kl(m, v, "none"), (t["mu16"], t["logvar16"])),
        "reparameterize_kl_bf16": (
            lambda m, v: F.reparameterize_kl(m, v, return_log_weights=True),
            (t["mu16"], t["logvar16"]),
        ),
        "sgvb_loss_gaussian_bf16": (loss("gaussian"), (t["recon16"], t["recon16"], t["mu16"], t["logvar16"])),
        # the IWAE loss of K = 2 samples: its one kernel (one program per datapoint), forward and backward
        "iwae_loss": (
            lambda r, x, z, m, v: F.iwae_loss(r, x, z, m, v, likelihood="bernoulli"),
            (t["recon2"], x, t["z"], mu, logvar),
        ),
        "iwae_loss_backward": (
            lambda g, r, x, z, m, v: ops.iwae_loss_backward(
                g, r, x, None, z, m, v, None, "bernoulli", "iwae", "sum", 1.0
            ),
            (one, t["recon2"].view(16, 784), x, t["z"], mu, logvar),
        ),
    }


def _entry_calls(t):
    """name -> (call, its tensors): each entry point writing into outputs it is given (an empty
    ``(0,)`` one not wanted), as ``fastaevb.ops.calls`` allocates them."""
    from fastaevb import kernels as K

    recon, probs, x, mu, logvar = (t[k] for k in ("recon", "probs", "x", "mu", "logvar"))

    def e(like):
        return like.new_empty(0)

    def kl_sum(m, v):
        out, gm, gv = torch.empty((), device=m.device), torch.empty_like(m), torch.empty_like(v)
        K.gaussian_kl_forward(out, gm, gv, m, v, "sum", 1.0)
        return out, gm, gv

    def kl_rows_backward(g, m, v):
        gm, gv = torch.empty_like(m), torch.empty_like(v)
        K.gaussian_kl_backward(gm, gv, g, m, v, "rows", 1.0)
        return gm, gv

    def bce_rows(r, x):
        out = torch.empty(r.shape[0], device=r.device)
        K.bernoulli_log_likelihood_forward(out, e(r), e(r), r, x, None, None, "rows", 1.0)
        return out

    def bce_probs_weighted_sum(p, x, w):
        out, gp, gx = torch.empty((), device=p.device), torch.empty_like(p), torch.empty_like(p)
        K.bernoulli_probs_log_likelihood_forward(out, gp, gx, p, x, w.expand(p.shape), "sum", -1.0)
        return out, gp, gx

    def bce_backward(g, r, x):
        gr = torch.empty_like(r)
        K.bernoulli_log_likelihood_backward(gr, e(r), g, r, x, None, None, "sum", 1.0)
        return gr

    def gaussian_shared_backward(g, x, r, s):
        gm, gs = torch.empty_like(r), torch.empty_like(s)
        K.gaussian_log_likelihood_backward(gm, gs, g, x, r, s, "sum", 1.0)
        return gm, gs

    def reparameterize(m, v, seed):
        z = torch.empty(2, *m.shape, device=m.device)
        K.reparameterize_kl_forward(z, e(m), e(m), e(m), m, v, None, seed, 2)
        return z

    def reparameterize_backward(gz, m, v, seed):
        gm, gv = torch.empty_like(m), torch.empty_like(v)
        K.reparameterize_kl_backward(gm, gv, gz, None, None, None, m, v, None, seed, 2)
        return gm, gv

    def sgvb(likelihood):
        def call(r, x, s, m, v):
            out = torch.empty((), device=r.device)
            grads = (torch.empty_like(r), torch.empty_like(s) if likelihood == "gaussian" else e(r))
            grads += (torch.empty_like(m), torch.empty_like(v))
            K.sgvb_loss_forward(out, *grads, r, x, s, m, v, likelihood, 1.0, 1.0)
            return out, *grads

        return call

    mu16, lv16 = t["mu16"], t["logvar16"]
    return {
        "gaussian_kl_forward": (kl_sum, (mu, logvar)),
        "gaussian_kl_backward": (kl_rows_backward, (t["rows"], mu, logvar)),
        "bernoulli_log_likelihood_forward": (bce_rows, (recon, x)),
        "bernoulli_probs_log_likelihood_forward": (bce_probs_weighted_sum, (probs, x, t["weight"])),
        "bernoulli_log_likelihood_backward": (bce_backward, (t["one"], recon, x)),
        "gaussian_log_likelihood_backward": (gaussian_shared_backward, (t["one"], x, recon, t["shared"])),
        "reparameterize_kl_forward": (reparameterize, (mu, logvar, t["seed"])),
        "reparameterize_kl_forward_bf16": (reparameterize, (mu16, lv16, t["seed"])),
        "reparameterize_kl_backward": (reparameterize_backward, (t["z"], mu, logvar, t["seed"])),
        "sgvb_loss_forward": (sgvb("bernoulli"), (recon, x, t["shared"], mu, logvar)),
        "sgvb_loss_forward_gaussian": (sgvb("gaussian"), (recon, x, t["shared"], mu, logvar)),
    }


def _launches(graph) -> tuple[list, list]:
    """``([kernel, written arguments], ...)`` of a graph, and the written arguments that are inputs."""
    nodes = [n for n in graph.nodes if n.op == "call_function"]
    launches = [n for n in nodes if n.target is torch.ops.higher_order.triton_kernel_wrapper_functional]
    kernels = [[_kernel_name(n.kwargs["kernel_idx"]), sorted(n.kwargs["tensors_to_clone"])] for n in launches]
    # written arguments that are graph inputs: Inductor would have to copy them first
    writes = [a for n in launches for a in n.kwargs["tensors_to_clone"] if n.kwargs["kwargs"][a].op == "placeholder"]
    return kernels, writes


def main(device: str, entries: bool = False) -> None:
    logging.getLogger("torch._higher_order_ops.triton_kernel_wrap").setLevel(logging.ERROR)
    triton.runtime.driver.set_active(_Sm90())
    fake = FakeTensorMode()
    with fake:
        cuda = dict(device=device)
        tensors = dict(
            recon=torch.empty(8, 784, **cuda),
            probs=torch.empty(8, 784, **cuda),
            x=torch.empty(8, 784, **cuda),
            mu=torch.empty(8, 20, **cuda),
            logvar=torch.empty(8, 20, **cuda),
            z=torch.empty(2, 8, 20, **cuda),
            recon2=torch.empty(2, 8, 784, **cuda),
            shared=torch.empty(1, **cuda),
            seed=torch.empty((), dtype=torch.int64, **cuda),
            rows=torch.empty(8, **cuda),
            one=torch.empty((), **cuda),
            recon16=torch.empty(8, 784, dtype=torch.bfloat16, **cuda),
            mu16=torch.empty(8, 20, dtype=torch.bfloat16, **cuda),
            logvar16=torch.empty(8, 20, dtype=torch.bfloat16, **cuda),
            weight=torch.empty(1, 784, **cuda),
        )
    report = {}
    if entries:
        for name, (call, args) in _entry_calls(tensors).items():
            graph = make_fx(dispatch_functionalize(call), tracing_mode="fake")(*args).graph
            kernels, writes = _launches(graph)
            report[name] = dict(kernels=kernels, writes_inputs=writes)
        print(json.dumps(report))
        return
    for name, (call, args) in _calls(tensors).items():
        with fastaevb.ops.use_custom_ops():
            graph = make_fx(dispatch_functionalize(call), tracing_mode="fake")(*args).graph
            with fake:  # the op's fake kernel: what dynamo saw; the launchers must agree with it
                declared = _metadata(call(*args))
        returned = graph.output_node().args[0]
        traced = _metadata([a.meta["val"] for a in (returned if isinstance(returned, (tuple, list)) else (returned,))])
        kernels, writes = _launches(graph)
        report[name] = dict(
            kernels=kernels,
            writes_inputs=writes,
            fastaevb_nodes=[
                str(n.target) for n in graph.nodes if n.op == "call_function" and "fastaevb" in str(n.target)
            ],
            outputs_as_declared=traced == declared,
        )
    print(json.dumps(report))


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "cuda"
    main("cuda" if mode == "entries" else mode, entries=mode == "entries")
