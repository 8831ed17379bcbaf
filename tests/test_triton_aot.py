"""Every Triton kernel compiles ahead of time for sm_80 and sm_90 (no GPU needed): the quick table.

The suite compiles ``python -m fastaevb.kernels.aot --quick``: one configuration per kernel and
width class (tile x width kind 'one' / 'div16' / 'any'), the heaviest of its class (most flags on,
float64 first), 38 per architecture, with registers, spills, vector loads, division and the
finish kernel's assert checked. The full table (every specialization the launchers can pick,
about 1230 per architecture: about 20 minutes on one core) is its own command, which CI runs
when the kernel sources changed: ``bash scripts/aot.sh`` (``kernels/aot_table.sha256`` records
the sources it last passed for). Its listing (``--list``, nothing compiled) is checked here: it
covers every kernel, and the quick table is one configuration of each of its classes.

The compiles run in a subprocess with TRITON_INTERPRET removed from its environment: this test
process runs the interpreter for the kernel tests, and the interpreter replaces the compiler. By
default the subprocess uses Triton's normal cache, whose key covers the kernel source,
signature, constexprs, options and Triton version, so a hit means that exact compile succeeded;
set FASTAEVB_AOT_FRESH=1 to compile into an empty cache.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("triton")

ARCHS = (80, 90)
COMMAND = [sys.executable, "-m", "fastaevb.kernels.aot"]
TIMEOUT = 900  # a fresh cache: 76 compiles on 2 cores take about two minutes
# randn + 4 fused steps x (forward, backward) + the finish kernel: one kernel pair serves both
# Bernoulli parameterizations (constexpr PROBS), the fused loss is the decoder kernels' HAS_KL;
# the IWAE loss is one kernel for every decoder (constexpr FORM), forward and backward
KERNEL_NAMES = {
    "randn_kernel",
    "finish_kernel",
    "reparameterize_kl_fwd_kernel",
    "reparameterize_kl_bwd_kernel",
    "gaussian_kl_fwd_kernel",
    "gaussian_kl_bwd_kernel",
    "bernoulli_log_likelihood_fwd_kernel",
    "bernoulli_log_likelihood_bwd_kernel",
    "gaussian_log_likelihood_fwd_kernel",
    "gaussian_log_likelihood_bwd_kernel",
    "error_log_likelihood_fwd_kernel",
    "error_log_likelihood_bwd_kernel",
    "iwae_loss_kernel",
}


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    return env


@functools.cache
def _listing(*flags: str) -> list[dict]:
    """``aot --list`` (nothing compiled): the table's configurations, once per set of flags."""
    with tempfile.TemporaryDirectory(prefix="fastaevb-aot-") as tmp:
        out = os.path.join(tmp, "list.json")
        proc = subprocess.run(
            [*COMMAND, "--list", *flags, "--json", out], env=_env(), capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(Path(out).read_text())["specs"]


@pytest.fixture(scope="module")
def quick_run():
    """The quick table compiled for both architectures (one process, two workers)."""
    env = _env()
    with tempfile.TemporaryDirectory(prefix="fastaevb-aot-") as tmp:
        if os.environ.get("FASTAEVB_AOT_FRESH") == "1":
            env["TRITON_CACHE_DIR"] = os.path.join(tmp, "cache")
        out = os.path.join(tmp, "quick.json")
        command = [*COMMAND, "--quick", "--arch", *map(str, ARCHS), "--jobs", "2", "--json", out]
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        records = json.loads(Path(out).read_text())["records"] if os.path.exists(out) else None
        yield proc.returncode, stdout, stderr, records


def _records(quick_run, arch: int) -> list[dict]:
    rc, stdout, stderr, records = quick_run
    assert records is not None, f"no results from the AOT run (rc={rc})\n{stdout[-3000:]}\n{stderr[-3000:]}"
    return [r for r in records if r["arch"] == arch]


def test_aot_refuses_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([*COMMAND, "--arch", "80"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "TRITON_INTERPRET" in proc.stderr


def test_the_full_table_covers_every_kernel_and_the_quick_table_each_class():
    full, quick = _listing(), _listing("--quick")
    assert {s["kernel"] for s in full} == KERNEL_NAMES
    assert len({(s["kernel"], s["config"]) for s in full}) == len(full)  # labels name configs uniquely
    classes = {(s["kernel"], s["tile"], s["width"].partition("=")[2]) for s in full}
    quick_classes = [(s["kernel"], s["tile"], s["width"].partition("=")[2]) for s in quick]
    assert sorted(quick_classes) == sorted(classes)  # one per class, every class
    assert all(s in full for s in quick)
    # every width kind of the tables: the width-1 constant, the divisibility hint, a plain width
    widths = {s["width"] for s in full}
    assert {"D=one", "D=div16", "D=any", "J=one", "J=div16", "J=any"} <= widths
    assert len(quick) < len(full) // 20


@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_compiles(quick_run, arch):
    records = _records(quick_run, arch)
    failed = [r for r in records if not r["ok"]]
    assert not failed, "\n".join(f"{r['kernel']} [{r['config']}]: {r['error'][:1500]}" for r in failed)
    assert quick_run[0] == 0, quick_run[2][-3000:]
    expected = [(s["kernel"], s["config"]) for s in _listing("--quick")]
    assert sorted((r["kernel"], r["config"]) for r in records) == sorted(expected)
    assert all(r["ptx"] > 0 and r["cubin"] > 0 for r in records)
    assert {r["kernel"] for r in records} == KERNEL_NAMES


@pytest.mark.parametrize("arch", ARCHS)
def test_registers_and_no_spills(quick_run, arch):
    """Resource usage from cuobjdump: no configuration spills (a spill fails the record), and the
    reparameterize_kl backward (166-255 registers at 57fb46e: 12-19% occupancy) stays at <= 96."""
    records = _records(quick_run, arch)
    assert all(r["stack"] == 0 and r["local"] == 0 for r in records), [
        (r["kernel"], r["config"], r["stack"]) for r in records if r["stack"] or r["local"]
    ]
    assert all(0 < r["reg"] <= 255 for r in records)
    bwd = [r["reg"] for r in records if r["kernel"] == "reparameterize_kl_bwd_kernel"]
    assert bwd and max(bwd) <= 96, bwd  # measured 26-80 over the full table


@pytest.mark.parametrize("arch", ARCHS)
def test_vector_loads_and_rounded_division(quick_run, arch):
    """PTX greps: a row width divisible by 16 (the divisibility hint the JIT gives such a width)
    compiles to vector loads (``ld.global.v4`` / ``.v2``; 57fb46e: scalar loads only); no
    approximate float32 division anywhere; the finish kernel keeps its device-side assert."""
    records = _records(quick_run, arch)
    for kernel, width in (
        ("bernoulli_log_likelihood_fwd_kernel", "D"),
        ("bernoulli_log_likelihood_bwd_kernel", "D"),
        ("gaussian_log_likelihood_fwd_kernel", "D"),
        ("gaussian_log_likelihood_bwd_kernel", "D"),
        ("reparameterize_kl_fwd_kernel", "J"),
        ("gaussian_kl_fwd_kernel", "J"),
        ("iwae_loss_kernel", "D"),
    ):
        chosen = [r for r in records if r["kernel"] == kernel and r["width"] == f"{width}=div16"]
        assert chosen and all(r["vector_loads"] > 0 for r in chosen), (
            kernel,
            [r["config"] for r in chosen if not r["vector_loads"]][:3],
        )
    assert not [r for r in records if r["div_full"]], "approximate float32 division in the PTX"
    finish = [r for r in records if r["kernel"] == "finish_kernel" and "CHECK_X=1" in r["config"]]
    assert finish and all(r["assert_calls"] > 0 for r in finish)
