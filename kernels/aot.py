"""Ahead-of-time compile every Triton kernel of fastaevb for sm_80 / sm_90, without a GPU.

    python -m fastaevb.kernels.aot --arch 80 90            the full table
    python -m fastaevb.kernels.aot --arch 80 90 --quick    one config per kernel, tile and width kind
    python -m fastaevb.kernels.aot --list [--quick]        list the configurations, compile nothing

A driver: the configurations are the kernel modules' own (``aot_specs()`` in each module of
``AOT_MODULES``, built with ``_aot_spec``): each entry point run over its whole domain (every
dtype in DTYPES, width class, reduction, wanted output and flag) with its launches recorded as the
JIT would specialize them on CUDA, deduplicated here. So every specialization a launcher can pick
is listed with its launcher's options (tile constexprs, num_warps, maxnreg, FMA contraction on,
``debug`` for the finish kernel's device assert), and the row width (D or J) in each form Triton's
JIT specializes it to: the constant 1, an int32 divisible by 16 (``tt.divisibility`` hint: vector
loads) and a plain int32. Pointers are 16-byte aligned (as fresh torch allocations and the
launchers' count buffers are; a misaligned view makes the JIT compile one more, unhinted, variant).

``--quick`` keeps one configuration per kernel and width class (tile x 'one' / 'div16' / 'any'),
the heaviest of its class (most flags on, float64 first): the test suite's cold check.
``scripts/aot.sh`` runs the full table when the kernel sources changed.

Lowers through ptxas (bundled with triton) via ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", arch, 32))``, then reads registers, stack (spills), shared and local
memory of each cubin with the bundled ``cuobjdump --dump-resource-usage`` and counts PTX vector
loads (``ld.global.v4`` / ``.v2``), approximate divisions and ``__assertfail`` calls. Prints one
row per kernel/config/arch and a register summary per kernel; a config that spills counts as
failed; exits 1 if any failed. Refuses to run under TRITON_INTERPRET=1 (the interpreter replaces
the compiler).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ._aot_spec import Spec


def collect_specs() -> list[Spec]:
    """Every configuration of the full table: the kernel modules' specs, deduplicated, sorted by
    kernel and label (labels are unique per kernel: the reports and tests key on them)."""
    from . import AOT_MODULES

    specs: dict[tuple, Spec] = {}
    for module in AOT_MODULES:
        for spec in module.aot_specs():
            specs.setdefault(spec.key, spec)
    labels: dict[tuple[str, str], Spec] = {}
    for spec in specs.values():
        other = labels.setdefault((spec.name, spec.label), spec)
        if other is not spec:
            raise RuntimeError(f"two configurations of {spec.name} share the label {spec.label!r}")
    return sorted(specs.values(), key=lambda s: (s.name, s.label))


def _weight(spec: Spec) -> tuple:
    return (sum(bool(v) for v in spec.flags.values()), spec.label.startswith("fp64 "))


def quick_specs(specs: list[Spec]) -> list[Spec]:
    """One configuration per kernel and width class (tile, width kind): the heaviest of the class."""
    classes: dict[tuple, list[Spec]] = {}
    for spec in specs:
        classes.setdefault((spec.name, spec.tile, spec.width_kind), []).append(spec)
    return [max(group, key=_weight) for group in classes.values()]


def compile_one(spec: Spec, arch: int):
    """Compile one spec for ``sm_<arch>``; returns the CompiledKernel (asm: ttir ... ptx, cubin).

    Options are the launchers' as recorded: the tile's ``num_warps`` / ``maxnreg``, FMA
    contraction on (``launch`` pins it), ``debug`` as the kernel declares it (``finish_kernel``:
    its device-side assert)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = [name for name, _ in spec.signature]
    # the divisibility hints the JIT gives: 16-byte aligned pointers, a width divisible by 16
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in spec.div16}
    src = ASTSource(spec.kernel, dict(spec.signature), dict(spec.constexprs), attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(spec.options))


def resource_usage(cubin: bytes) -> dict:
    """Registers, stack (spills), shared and local memory of a cubin, from the ``cuobjdump`` that
    ships with Triton (``--dump-resource-usage``)."""
    import re
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import knobs

    tool = os.path.join(os.path.dirname(knobs.nvidia.ptxas.path), "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    found = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    return {k.lower(): int(found.get(k, -1)) for k in ("REG", "STACK", "SHARED", "LOCAL")}


def _compile_task(task: tuple[int, Spec]) -> dict:
    """Worker: compile ``spec`` for ``arch``; returns a plain, picklable record."""
    arch, spec = task
    t0 = time.perf_counter()
    rec = dict(
        kernel=spec.name,
        config=spec.label,
        tile=spec.tile,
        width=spec.width,
        arch=arch,
        ok=False,
        ptx=0,
        cubin=0,
        error="",
        reg=-1,
        stack=-1,
        shared=-1,
        local=-1,
        v4_loads=0,
        vector_loads=0,
        scalar_loads=0,
        div_full=0,
        assert_calls=0,
    )
    try:
        ck = compile_one(spec, arch)
        ptx, cubin = ck.asm.get("ptx", ""), ck.asm.get("cubin", b"")
        rec.update(ptx=len(ptx), cubin=len(cubin), ok=bool(ptx) and bool(cubin) and f".target sm_{arch}" in ptx)
        rec.update(resource_usage(cubin))
        rec.update(
            v4_loads=ptx.count("ld.global.v4"),
            vector_loads=ptx.count("ld.global.v4") + ptx.count("ld.global.v2"),
            scalar_loads=ptx.count("ld.global.b32"),
            div_full=ptx.count("div.full.f32") + ptx.count("div.approx.f32"),
            assert_calls=ptx.count("__assertfail"),
        )
        if not rec["ok"]:
            rec["error"] = "empty PTX/cubin or wrong .target"
        elif rec["stack"] != 0 or rec["local"] != 0:
            rec["ok"] = False
            rec["error"] = f"register spills: stack {rec['stack']} B, local {rec['local']} B"
    except Exception as exc:  # report and keep going
        msg, cause = f"{type(exc).__name__}: {exc}", exc.__cause__
        while cause is not None:
            msg, cause = msg + f"\n  caused by {type(cause).__name__}: {cause}", cause.__cause__
        rec["error"] = msg
    rec["sec"] = round(time.perf_counter() - t0, 3)
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="SM versions (default: 80 90)")
    ap.add_argument("--quick", action="store_true", help="one config per kernel, tile and width kind")
    ap.add_argument("--list", action="store_true", help="list the configurations and their count; compile nothing")
    ap.add_argument("--filter", default="", help="only kernels whose name contains this")
    ap.add_argument("--jobs", type=int, default=1, help="compile in this many processes (default 1)")
    ap.add_argument("--json", default=None, help="also write the per-config records to this file")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print(
            "fastaevb.kernels.aot: TRITON_INTERPRET is set; the interpreter replaces the compiler, "
            "so nothing would be compiled. Unset it (e.g. `env -u TRITON_INTERPRET ...`) and rerun.",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silence the 3.9 default-change warning
    specs = collect_specs()
    if args.quick:
        specs = quick_specs(specs)
    specs = [s for s in specs if args.filter in s.name]
    if args.list:
        return _list(specs, args)
    tasks = [(arch, s) for arch in args.arch for s in specs]
    t_all = time.perf_counter()
    print(
        f"{'kernel':38} {'config':80} {'arch':>5} {'status':6} {'ptx':>7} {'cubin':>7} {'reg':>4} {'stk':>4} "
        f"{'smem':>5} {'vec':>4} {'sec':>5}",
        flush=True,
    )
    if args.jobs > 1:
        import concurrent.futures as cf
        import multiprocessing as mp

        with cf.ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            records = [_print_record(r) for r in pool.map(_compile_task, tasks, chunksize=4)]
    else:
        records = [_print_record(_compile_task(t)) for t in tasks]
    wall = time.perf_counter() - t_all
    mode = "quick" if args.quick else "full"
    for arch in args.arch:
        mine = [r for r in records if r["arch"] == arch]
        print(
            f"# sm_{arch} ({mode}): {sum(r['ok'] for r in mine)}/{len(mine)} configs of "
            f"{len({r['kernel'] for r in mine})} kernels compiled, {sum(r['sec'] for r in mine):.1f}s compile time"
        )
        for name in sorted({r["kernel"] for r in mine}):
            regs = [r["reg"] for r in mine if r["kernel"] == name]
            spills = sum(r["stack"] > 0 or r["local"] > 0 for r in mine if r["kernel"] == name)
            print(f"#   {name:38} registers {min(regs)}-{max(regs)}, configs with spills: {spills}")
    failures = sum(not r["ok"] for r in records)
    print(
        f"# total ({mode}): {len(records) - failures}/{len(records)} compiled, {failures} failed, {wall:.1f}s wall",
        flush=True,
    )
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(dict(records=records, wall=wall, mode=mode), f)
    return 1 if failures else 0


def _list(specs: list[Spec], args) -> int:
    """``--list``: one row per configuration, a count per kernel, the total over the archs."""
    for spec in specs:
        print(f"{spec.name:38} {spec.label}")
    for name in sorted({s.name for s in specs}):
        print(f"#   {name:38} {sum(s.name == name for s in specs)} configs")
    n = len(specs)
    print(f"# {'quick' if args.quick else 'full'}: {n} configs x {len(args.arch)} archs = {n * len(args.arch)}")
    if args.json:
        import json

        rows = [dict(kernel=s.name, config=s.label, tile=s.tile, width=s.width) for s in specs]
        with open(args.json, "w") as f:
            json.dump(dict(specs=rows, archs=args.arch), f)
    return 0


def _print_record(r: dict) -> dict:
    status = "ok" if r["ok"] else "FAIL"
    print(
        f"{r['kernel']:38} {r['config']:80} {'sm_' + str(r['arch']):>5} {status:6} "
        f"{r['ptx']:7d} {r['cubin']:7d} {r['reg']:4d} {r['stack']:4d} {r['shared']:5d} {r['vector_loads']:4d} "
        f"{r['sec']:5.2f}",
        flush=True,
    )
    if r["error"]:
        print(f"  {r['kernel']} [{r['config']}] sm_{r['arch']}: {r['error']}", file=sys.stderr, flush=True)
    return r


if __name__ == "__main__":
    sys.exit(main())
