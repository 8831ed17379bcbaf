"""The numba backend's Philox noise (fastaevb/_numba_philox.py) is Triton's ``tl.randn``.

Three independent references:
- Philox4x32-10 written here in plain Python from the published constants (Salmon et al.,
  "Parallel random numbers: as easy as 1, 2, 3", SC 2011), checked itself against the
  known-answer vectors of Random123 (kat_vectors, philox4x32_10);
- the uint -> uniform and Box-Muller steps of triton/language/random.py, in numpy float32;
- ``tl.randn(seed, offset)`` itself, run by the Triton interpreter on CPU.
The 32-bit words and the uniforms must match exactly; the normals to an ulp or two of
log / cos (libm versus numpy).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("numba")

from fastaevb.backends import numba as _numba
from fastaevb.backends.numba import philox

MASK32 = 0xFFFFFFFF
SEEDS = [0, 1, 42, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 7, 123456789012345, 2**62 + 12345, 2**63 - 1]
OFFSETS = [0, 1, 2, 3, 1000, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1, 2**32, 2**32 + 1, 2**40 + 3, 2**62, 2**63 - 1]
# libm's logf / cosf versus numpy's SIMD float32 log / cos: an ulp or two; |n| <= 5.7.
NOISE_TOL = dict(rtol=1e-5, atol=1e-5)


# --- plain-Python references ------------------------------------------------------------------


def philox4x32_10_reference(counter, key):
    """Philox4x32-10 from the published round function and constants, on Python ints."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        hi0, lo0 = divmod(0xD2511F53 * c0, 2**32)
        hi1, lo1 = divmod(0xCD9E8D57 * c2, 2**32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + 0x9E3779B9) & MASK32, (k1 + 0xBB67AE85) & MASK32
    return c0, c1, c2, c3


def randn_reference(seed: int, offset: int) -> np.float32:
    """triton/language/random.py randn, step by step in numpy float32."""
    words = philox4x32_10_reference((offset & MASK32, offset >> 32, 0, 0), (seed & MASK32, seed >> 32))
    u1, u2 = (uniform_reference(w) for w in words[:2])
    u1 = np.maximum(np.float32(1e-7), u1)
    th = np.float32(6.283185307179586) * u2
    r = np.sqrt(np.float32(-2.0) * np.log(u1))
    return r * np.cos(th)


def uniform_reference(word: int) -> np.float32:
    x = np.array([word], dtype=np.uint32).view(np.int32)
    x = np.where(x < 0, ~x, x)
    return (x.astype(np.float32) * np.float32(4.6566127342e-10))[0]


# Random123 kat_vectors, philox4x32_10: (counter, key) -> output.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK32,) * 4, (MASK32, MASK32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_reference_and_numba_philox_match_known_answers(counter, key, expected):
    assert philox4x32_10_reference(counter, key) == expected
    got = philox.philox4x32_10(*(np.uint64(v) for v in (*counter, *key)))
    assert tuple(int(w) for w in got) == expected


# --- words and uniforms: exact ------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_philox_words_match_reference(seed):
    for offset in OFFSETS:
        got = philox.philox_words(np.uint64(seed), np.int64(offset))
        expected = philox4x32_10_reference((offset & MASK32, offset >> 32, 0, 0), (seed & MASK32, seed >> 32))
        assert tuple(int(w) for w in got) == expected, (seed, offset)


@pytest.mark.parametrize(
    "word",
    [
        0,
        1,
        2,
        0x7FFFFF,
        0x1000001,
        0x7FFFFFBF,
        0x7FFFFFFF,
        0x80000000,
        0x80000001,
        0xFFFFFF7F,
        0xFFFFFFFE,
        0xFFFFFFFF,
        0x6627E8D5,
        0xE169C58D,
    ],
)
def test_uniform_matches_reference(word):
    got = philox.uint_to_uniform(np.uint64(word))
    assert np.float32(got) == uniform_reference(word)
    assert 0.0 <= got < 1.0


# --- normals ------------------------------------------------------------------------------------


def all_offsets() -> torch.Tensor:
    return torch.cat([torch.arange(0, 256), torch.arange(2**32 - 64, 2**32 + 64), torch.tensor(OFFSETS)])


@pytest.mark.parametrize("seed", SEEDS)
def test_randn_matches_reference(seed):
    offsets = all_offsets()
    got = _numba.randn(seed, offsets)
    expected = torch.tensor([randn_reference(seed, int(o)) for o in offsets])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, **NOISE_TOL)


# tl.randn is decorated when triton is imported, so the interpreter must be on from the start.
# conftest turns it on for CPU-only machines; elsewhere (a GPU runner) the kernel runs in a
# subprocess with TRITON_INTERPRET=1 so the rest of the session keeps compiled Triton.
TRITON_RANDN_SCRIPT = """
import sys, torch, triton, triton.language as tl

@triton.jit
def randn_kernel(out_ptr, offsets_ptr, seed, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    tl.store(out_ptr + i, tl.randn(seed, tl.load(offsets_ptr + i, mask=mask)), mask=mask)

def triton_randn_table(seeds, offsets):
    table = {}
    for seed in seeds:
        out = torch.empty(offsets.shape, dtype=torch.float32)
        randn_kernel[(triton.cdiv(offsets.numel(), 1024),)](out, offsets, seed, offsets.numel(), BLOCK=1024)
        table[seed] = out
    return table

if __name__ == "__main__":
    seeds, offsets = torch.load(sys.argv[1])
    torch.save(triton_randn_table(seeds, offsets), sys.argv[2])
"""


@pytest.fixture(scope="module")
def triton_randn_table(tmp_path_factory):
    """``{seed: tl.randn(seed, all_offsets())}`` from the Triton interpreter (CPU, no GPU needed)."""
    pytest.importorskip("triton")
    offsets = all_offsets()
    if os.environ.get("TRITON_INTERPRET") == "1":
        namespace = {"__name__": "triton_randn"}
        exec(compile(TRITON_RANDN_SCRIPT, "triton_randn", "exec"), namespace)
        return namespace["triton_randn_table"](SEEDS, offsets)
    folder = tmp_path_factory.mktemp("triton_randn")
    script, inputs, outputs = folder / "triton_randn.py", folder / "in.pt", folder / "out.pt"
    script.write_text(TRITON_RANDN_SCRIPT)
    torch.save((SEEDS, offsets), inputs)
    env = dict(os.environ, TRITON_INTERPRET="1")
    subprocess.run([sys.executable, str(script), str(inputs), str(outputs)], env=env, check=True, timeout=600)
    return torch.load(outputs)


@pytest.mark.parametrize("seed", SEEDS)
def test_randn_matches_triton_tl_randn(seed, triton_randn_table):
    torch.testing.assert_close(_numba.randn(seed, all_offsets()), triton_randn_table[seed], **NOISE_TOL)


def test_randn_keeps_the_shape_of_offsets():
    offsets = torch.arange(24).reshape(2, 3, 4)
    got = _numba.randn(7, offsets)
    assert got.shape == (2, 3, 4)
    torch.testing.assert_close(got.reshape(-1), _numba.randn(7, torch.arange(24)), rtol=0, atol=0)
