"""torch.library.opcheck on every custom op: schema, autograd registration, fake kernel, AOT dispatch."""

from __future__ import annotations

import pytest
import torch

from conftest import device_for
from fastaevb.ops.registrar import CUSTOM

ops = torch.ops.fastaevb


def sample_args(device):
    """For each op, argument tuples covering its modes (float64, so AOT comparisons are exact)."""
    gen = torch.Generator().manual_seed(11)

    def rand(*shape, low=0.0, high=1.0, grad=False):
        t = (low + (high - low) * torch.rand(*shape, generator=gen, dtype=torch.float64)).to(device)
        return t.requires_grad_(grad)

    mu, logvar = rand(4, 3, low=-1, grad=True), rand(4, 3, low=-1, grad=True)
    logits, probs = rand(6, 5, low=-3, high=3, grad=True), rand(6, 5, low=0.05, high=0.95, grad=True)
    x, x8 = rand(3, 5), (rand(3, 5) > 0.5).to(torch.uint8)
    x_grad = rand(3, 5, low=0.05, high=0.95, grad=True)  # a differentiable target
    x_full = rand(6, 5, low=0.05, high=0.95, grad=True)  # the drop-ins' target: the input's shape
    # the drop-ins' weights: broadcast (R, D) views (per column, per row, one value) and a full one
    weight_col, weight_row = rand(5, low=-1).expand(6, 5), rand(6, 1).expand(6, 5)
    weight_one, weight_full, pos_weight = rand(()).expand(6, 5), rand(6, 5), rand(5, high=3).expand(6, 5)
    mean, gauss_logvar, shared = rand(6, 5, grad=True), rand(6, 5, low=-1, grad=True), rand(1, grad=True)
    seed, eps = torch.tensor(123456789), rand(2, 4, 3, low=-2, high=2)
    mu3, logvar3 = rand(3, 4, low=-1, grad=True), rand(3, 4, low=-1, grad=True)  # the latents of x's batch
    kl_weight = torch.tensor(0.25, dtype=torch.float64)  # a 0-d weight: an input, not a constant
    logits_, mean_, shared_, mu3_, logvar3_ = (t.detach() for t in (logits, mean, shared, mu3, logvar3))
    by_op = {
        ops.reparameterize_kl: [
            (mu, logvar, None, seed, 1, False, False),
            (mu, logvar, None, seed, 2, True, True),
            (mu, logvar, eps, None, 2, True, False),
        ],
        ops.reparameterize_kl_backward: [
            (rand(2, 4, 3), rand(4), rand(2, 4), rand(2, 4), mu.detach(), logvar.detach(), None, seed, 2),
            (None, rand(4), None, None, mu.detach(), logvar.detach(), eps[:1], None, 1),
        ],
        ops.gaussian_kl: [(mu, logvar, "rows", 1.0, False), (mu, logvar, "sum", 0.25, True)],
        ops.gaussian_kl_backward: [
            (rand(4), mu.detach(), logvar.detach(), "rows", 1.0),
            (rand(()), mu.detach(), logvar.detach(), "sum", 0.5),
        ],
        ops.bernoulli_log_likelihood: [
            (logits, x, None, None, "rows", 1.0, False, False),
            (logits, x8, None, None, "none", -1.0, False, False),
            (logits, x, None, None, "sum", -0.1, True, False),
            (logits, x_grad, None, None, "rows", 1.0, False, True),  # target gradient over 2 samples
            (logits, x_full, weight_col, pos_weight, "none", -1.0, False, True),
            (logits, x_full, weight_row, None, "sum", -0.5, True, True),
            (logits, x8, weight_one, pos_weight, "sum", -1.0, True, False),
            (logits, x_full, None, pos_weight, "sum", -1.0, False, True),
        ],
        ops.bernoulli_log_likelihood_backward: [
            (rand(6), logits.detach(), x, None, None, "rows", 1.0, False),
            (rand(6, 5), logits.detach(), x8, None, None, "none", -1.0, False),
            (rand(6, 5), logits.detach(), x_full.detach(), weight_full, pos_weight, "none", -1.0, True),
            (rand(()), logits.detach(), x_grad.detach(), None, None, "sum", 2.0, True),
        ],
        ops.bernoulli_probs_log_likelihood: [
            (probs, x, None, "rows", 1.0, False, False),
            (probs, x8, None, "none", -1.0, False, False),
            (probs, x, None, "sum", 2.0, True, False),
            (probs, x_full, weight_full, "none", -1.0, False, True),
            (probs, x_grad, None, "sum", 0.5, True, True),
            (probs, x8, weight_col, "rows", 1.0, False, False),
        ],
        ops.bernoulli_probs_log_likelihood_backward: [
            (rand(()), probs.detach(), x, None, "sum", 1.0, False),
            (rand(6), probs.detach(), x_full.detach(), weight_row, "rows", 1.0, True),
        ],
        ops.gaussian_log_likelihood: [
            (x, mean, gauss_logvar, "rows", 1.0, False),
            (x, mean, shared, "sum", 0.5, True),
            (x, mean, shared, "rows", 1.0, False),
            (x, mean, gauss_logvar, "sum", -1.0, True),
        ],
        ops.gaussian_log_likelihood_backward: [
            (rand(6), x, mean.detach(), gauss_logvar.detach(), "rows", 1.0),
            (rand(()), x, mean.detach(), shared.detach(), "sum", 3.0),
        ],
        ops.error_log_likelihood: [
            (x, mean, gauss_logvar, "rows", 1.0, False, 2),
            (x, mean, shared, "sum", 0.5, True, 1),
            (x, mean, shared, "rows", 1.0, False, 2),
            (x, mean, gauss_logvar, "sum", -1.0, True, 1),
        ],
        ops.error_log_likelihood_backward: [
            (rand(6), x, mean.detach(), gauss_logvar.detach(), "rows", 1.0, 1),
            (rand(()), x, mean.detach(), shared.detach(), "sum", 3.0, 2),
        ],
        ops.sgvb_loss: [
            (logits, x, None, mu3, logvar3, None, None, "bernoulli", 1.0, 0.5, "kl", 0.0, True),
            (probs, x8, None, mu3, logvar3, kl_weight, None, "bernoulli_probs", 1.0, 0.5, "kl", 0.0, False),
            (mean, x, shared, mu3, logvar3, None, None, "gaussian", 0.5, 1.0, "kl", 0.0, True),
            (mean, x, shared, mu3, logvar3, kl_weight, None, "l1", 0.5, 0.25, "kl", 0.0, True),
            (mean, x, gauss_logvar, mu3, logvar3, None, None, "mse", 1.0, 1.0, "kl", 0.0, False),
            # the thresholded KL forms, a 0-d capacity as a schedule passes it
            (logits, x, None, mu3, logvar3, kl_weight, kl_weight, "bernoulli", 0.5, 1.0, "capacity", 2.0, True),
            (mean, x, shared, mu3, logvar3, None, None, "mse", 1.0, 1.0, "capacity_datapoint", 1.5, True),
            (probs, x8, None, mu3, logvar3, None, kl_weight, "bernoulli_probs", 1.0, 1.0, "free_bits", 0.5, True),
        ],
        ops.sgvb_loss_backward: [
            (rand(()), logits_, x, None, mu3_, logvar3_, kl_weight, None, "bernoulli", 1.0, 0.5, "kl", 0.0),
            (rand(()), mean_, x, shared_, mu3_, logvar3_, None, None, "mse", 1.0, 0.5, "kl", 0.0),
            (rand(()), logits_, x, None, mu3_, logvar3_, None, kl_weight, "bernoulli", 1.0, 0.5, "capacity", 1.0),
            (rand(()), mean_, x, shared_, mu3_, logvar3_, None, None, "gaussian", 1.0, 0.5, "free_bits", 0.2),
        ],
    }
    # the importance-weighted bound: K = 2 samples of the 3 datapoints, decoder rows k B + b
    z_ = rand(2, 3, 4, low=-2, high=2)
    z, gate = z_.clone().requires_grad_(), rand(2, 3, grad=True)
    by_op[ops.iwae_loss] = [
        (logits, x, None, z, mu3, logvar3, None, "bernoulli", "iwae", "sum", 0.5, True),
        (probs, x8, None, z, mu3, logvar3, None, "bernoulli_probs", "stl", "rows", 1.0, False),
        (mean, x, shared, z, mu3, logvar3, gate, "gaussian", "dreg", "sum", 1.0, True),
        (mean, x, gauss_logvar, z, mu3, logvar3, None, "l1", "iwae", "rows", 1.0, False),
    ]
    by_op[ops.iwae_loss_backward] = [
        (rand(()), logits_, x, None, z_, mu3_, logvar3_, None, "bernoulli", "iwae", "sum", 0.5),
        (rand(3), mean_, x, shared_, z_, mu3_, logvar3_, gate.detach(), "mse", "dreg", "rows", 1.0),
    ]
    # every op of the table and its backward op has cases
    named = {op.__name__: (op, args) for op, args in by_op.items()}
    assert set(named) >= {f"{name}{part}" for name in CUSTOM for part in ("", "_backward")}
    return named


CASES = [(name, i) for name, (_, arg_list) in sample_args("cpu").items() for i in range(len(arg_list))]


@pytest.mark.parametrize("op_name, index", CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_opcheck(kernel_backend, op_name, index):
    op, arg_list = sample_args(device_for(kernel_backend))[op_name]
    torch.library.opcheck(op, arg_list[index])
