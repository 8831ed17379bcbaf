"""Every Triton kernel compiles ahead of time for sm_80 and sm_90 (no GPU needed).

The compile runs in a subprocess with TRITON_INTERPRET removed from its environment: this
test process runs the interpreter for the kernel tests, and the interpreter replaces the
compiler. Both architectures compile concurrently (one process each), started once per module.

By default the subprocesses use Triton's normal cache, whose key covers the kernel source,
signature, constexprs, options and Triton version, so a hit means that exact compile succeeded;
set FASTAEVB_AOT_FRESH=1 to compile into an empty cache (about 1250 configurations per
architecture, 530 of them the BCE drop-ins' extras: 8-12 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("triton")

ARCHS = (80, 90)
AOT_FILE = Path(__file__).resolve().parents[1] / "kernels" / "aot.py"
TIMEOUT = 1800  # a fresh cache: both architectures at once on 2 cores


def _command() -> list[str]:
    if AOT_FILE.exists():  # source tree: run the file (works before/without installation)
        return [sys.executable, str(AOT_FILE)]
    return [sys.executable, "-m", "fastaevb.kernels.aot"]


@pytest.fixture(scope="module")
def aot_runs():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    tmp = tempfile.TemporaryDirectory(prefix="fastaevb-aot-")
    if os.environ.get("FASTAEVB_AOT_FRESH") == "1":
        env["TRITON_CACHE_DIR"] = os.path.join(tmp.name, "cache")
    procs = {}
    for arch in ARCHS:
        out = os.path.join(tmp.name, f"sm_{arch}.json")
        procs[arch] = (
            subprocess.Popen(
                _command() + ["--arch", str(arch), "--json", out],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
            out,
        )
    results = {}
    for arch, (proc, out) in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        records = json.loads(Path(out).read_text())["records"] if os.path.exists(out) else None
        results[arch] = (proc.returncode, stdout, stderr, records)
    yield results
    tmp.cleanup()


def test_aot_refuses_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(_command() + ["--arch", "80"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "TRITON_INTERPRET" in proc.stderr


@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_compiles(aot_runs, arch):
    from fastaevb.kernels import aot

    rc, stdout, stderr, records = aot_runs[arch]
    assert records is not None, f"no results from the AOT run (rc={rc})\n{stdout[-3000:]}\n{stderr[-3000:]}"
    failed = [r for r in records if not r["ok"]]
    assert not failed, "\n".join(f"{r['kernel']} [{r['config']}]: {r['error'][:1500]}" for r in failed)
    assert rc == 0, stderr[-3000:]
    expected = [(s.name, s.label) for s in aot.enumerate_specs()]
    assert sorted((r["kernel"], r["config"]) for r in records) == sorted(expected)
    assert {r["arch"] for r in records} == {arch}
    assert all(r["ptx"] > 0 and r["cubin"] > 0 for r in records)
    # randn + 4 fused steps x (forward, backward) + the finish kernel: one kernel pair serves both
    # Bernoulli parameterizations (constexpr PROBS), the fused loss is the decoder kernels' HAS_KL
    assert len({r["kernel"] for r in records}) == 10


@pytest.mark.parametrize("arch", ARCHS)
def test_registers_and_no_spills(aot_runs, arch):
    """Resource usage from cuobjdump: no configuration spills (a spill fails the record), and the
    reparameterize_kl backward (166-255 registers at 57fb46e: 12-19% occupancy) stays at <= 96."""
    records = aot_runs[arch][3]
    assert records is not None
    assert all(r["stack"] == 0 and r["local"] == 0 for r in records), [
        (r["kernel"], r["config"], r["stack"]) for r in records if r["stack"] or r["local"]
    ]
    assert all(0 < r["reg"] <= 255 for r in records)
    bwd = [r["reg"] for r in records if r["kernel"] == "reparameterize_kl_bwd_kernel"]
    assert max(bwd) <= 96, max(bwd)  # measured 26-80


@pytest.mark.parametrize("arch", ARCHS)
def test_vector_loads_and_rounded_division(aot_runs, arch):
    """PTX greps: a row width divisible by 16 (the divisibility hint the JIT gives such a width)
    compiles to ``ld.global.v4`` loads of float32 inputs (57fb46e: ``ld.global.b32`` only); no
    approximate float32 division anywhere; the finish kernel keeps its device-side assert."""
    records = aot_runs[arch][3]
    assert records is not None
    for kernel, width in (
        ("bernoulli_fwd_kernel", "D"),
        ("bernoulli_bwd_kernel", "D"),
        ("gaussian_fwd_kernel", "D"),
        ("gaussian_bwd_kernel", "D"),
        ("reparameterize_kl_fwd_kernel", "J"),
        ("gaussian_kl_fwd_kernel", "J"),
    ):
        chosen = [r for r in records if r["kernel"] == kernel and r["config"].startswith(f"fp32 {width}=div16 ")]
        assert chosen and all(r["v4_loads"] > 0 for r in chosen), (
            kernel,
            [r["config"] for r in chosen if not r["v4_loads"]][:3],
        )
    assert not [r for r in records if r["div_full"]], "approximate float32 division in the PTX"
    finish = [r for r in records if r["kernel"] == "finish_kernel" and "CHECK_X=1" in r["config"]]
    assert finish and all(r["assert_calls"] > 0 for r in finish)
