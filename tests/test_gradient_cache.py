"""The C++ autograd nodes' cache of decoder-gradient buffers (csrc/gradient_cache.h):
``fastaevb.empty_cache`` and ``_autograd.cached_gradient_bytes``."""

from __future__ import annotations

import sys

import pytest
import torch

import fastaevb
from fastaevb import ops

needs_autograd_nodes = pytest.mark.skipif(
    not (fastaevb.build_info().get("autograd_nodes", False) and sys.platform.startswith("linux")),
    reason="cached gradient buffers: the C++ autograd nodes on Linux",
)


def cached_gradient_bytes() -> int:
    return fastaevb.backends.kernels("cpp")._autograd.cached_gradient_bytes()


@needs_autograd_nodes
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize(
    "rows, pixels, alignment",
    [(100, 784, 4 << 10), (8448, 1000, 2 << 20)],  # the paper's 313 KB; 33.8 MB in 2 MB huge pages
    ids=["paper-size", "33.8MB"],
)
def test_cached_gradient_buffers_match_the_python_path(likelihood, rows, pixels, alignment):
    """Decoder gradients of 128 KB and more are written into buffers of the C++ node's cache
    (csrc/gradient_cache.h): the same values as the Python path's, a .grad that later steps can
    accumulate into like any other, and once freed, the buffer of the next step of that shape."""
    gen = torch.Generator().manual_seed(0)
    recon = torch.rand(rows, pixels, generator=gen).requires_grad_()
    x = torch.rand(rows, pixels, generator=gen)
    mu, logvar = torch.zeros(rows, 2, requires_grad=True), torch.zeros(rows, 2, requires_grad=True)
    loss_fn = fastaevb.SGVBLoss(likelihood)
    with fastaevb.use_backend("cpp"), ops.use_python_autograd():
        want = torch.autograd.grad(loss_fn(recon, x, mu, logvar), recon)[0]
    with fastaevb.use_backend("cpp"):
        loss = loss_fn(recon, x, mu, logvar)
        assert "CppNode" in loss.grad_fn.name()
        loss.backward()
        block = recon.grad.data_ptr()
        assert block % alignment == 0  # a cache block was handed over
        torch.testing.assert_close(recon.grad, want, rtol=0, atol=0)
        loss_fn(recon, x, mu, logvar).backward()  # accumulates into it
        torch.testing.assert_close(recon.grad, 2 * want, rtol=0, atol=0)
        recon.grad = None  # as optimizer.zero_grad() does: the block goes back to the cache
        loss_fn(recon, x, mu, logvar).backward()
        assert recon.grad.data_ptr() == block
        torch.testing.assert_close(recon.grad, want, rtol=0, atol=0)


@needs_autograd_nodes
def test_gradient_cache_keeps_four_blocks_until_emptied():
    loss_fn = fastaevb.SGVBLoss("bernoulli")
    sizes = [(100 + 10 * k, 784) for k in range(6)]  # six shapes, 313-470 KB each
    block_bytes = [-(-4 * rows * pixels // 4096) * 4096 for rows, pixels in sizes]  # rounded to pages
    fastaevb.empty_cache()
    with fastaevb.use_backend("cpp"):
        for rows, pixels in sizes:
            recon = torch.randn(rows, pixels, requires_grad=True)
            mu = torch.zeros(rows, 2, requires_grad=True)
            loss_fn(recon, torch.rand(rows, pixels), mu, torch.zeros(rows, 2)).backward()
            del recon  # its .grad, a cache block, goes back
    assert cached_gradient_bytes() == sum(block_bytes[-4:])  # the oldest two were released
    fastaevb.empty_cache()
    assert cached_gradient_bytes() == 0
