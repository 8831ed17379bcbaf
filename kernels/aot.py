"""Ahead-of-time compile every Triton kernel of fastaevb for sm_80 / sm_90, without a GPU.

    python -m fastaevb.kernels.aot --arch 80 90      (or: python kernels/aot.py --arch 80 90)

Enumerates each kernel with every specialization its launcher can produce: every dtype in
DTYPES (target pointer float-of-that-dtype or uint8 for the Bernoulli ops), every constexpr
flag combination, every tile of the width-keyed tables in ``_common.py`` with the launch options
(num_warps, maxnreg, FMA contraction on, ``debug`` for the finish kernel's device assert), and for
the row width (D or J) each form Triton's JIT specializes it to: the constant 1, an int32
divisible by 16 (``tt.divisibility`` hint: vector loads) and a plain int32. Row counts are
``do_not_specialize`` int64. Pointers are assumed 16-byte aligned (as fresh torch allocations
and the launchers' count buffers are; a misaligned view makes the JIT compile one more,
unhinted, variant).

Lowers through ptxas (bundled with triton) via ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", arch, 32))``, then reads registers, stack (spills), shared and local
memory of each cubin with the bundled ``cuobjdump --dump-resource-usage`` and counts PTX
``ld.global.v4`` loads, approximate divisions and ``__assertfail`` calls. Prints one row per
kernel/config/arch and a register summary per kernel; a config that spills counts as failed;
exits 1 if any failed. Refuses to run under TRITON_INTERPRET=1 (the interpreter replaces the compiler).
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    # Run as a file: this directory is sys.path[0], where our math.py would shadow the stdlib's.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

import argparse
import itertools
import time
from dataclasses import dataclass, field

if __package__ in (None, ""):  # run as a file: import this directory as a package
    import importlib

    sys.path.insert(0, os.path.dirname(_here))
    __package__ = os.path.basename(_here)
    importlib.import_module(__package__)

DTYPE_NAMES = ("fp32", "fp64", "fp16", "bf16")  # DTYPES of the backend, as triton type strings


@dataclass
class Spec:
    kernel: object  # JITFunction
    signature: dict  # arg name -> triton type string or "constexpr"
    constexprs: dict
    label: str = ""
    ptr_args: list = field(default_factory=list)
    div16_args: list = field(default_factory=list)  # int args compiled with the divisibility-16 hint
    num_warps: int = 4
    maxnreg: int = 0  # 0: no cap

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__


def _spec(
    kernel, types: dict, constexprs: dict, label: str, width: tuple = (), num_warps: int = 4, maxnreg: int = 0
) -> Spec:
    """``width``: ``(arg, kind)`` with kind 'one' (the JIT's constant 1), 'div16' (a multiple of 16:
    the divisibility hint the JIT gives such ints) or 'any'."""
    constexprs = dict(constexprs)
    div16 = []
    if width:
        arg, kind = width
        if kind == "one":
            constexprs[arg] = 1
        else:
            types = dict(types, **{arg: "i32"})
            if kind == "div16":
                div16.append(arg)
    sig = {}
    for name in kernel.arg_names:
        sig[name] = "constexpr" if name in constexprs else types[name]
    return Spec(
        kernel,
        sig,
        constexprs,
        label,
        [n for n in kernel.arg_names if sig[n].startswith("*")],
        div16,
        num_warps,
        maxnreg,
    )


def _flags(**kw) -> str:
    return ",".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in kw.items())


def _tile_variants(tiles: dict, one_tile: str):
    """(tile name, tile constexprs, launch options, width kind) for every specialization a launcher
    can reach: the width-1 constant only with the tile picked for width 1 (``one_tile``), the
    divisibility-16 and generic widths with every tile that serves widths > 1."""
    for name, tile in tiles.items():
        consts = {k: v for k, v in tile.items() if k not in ("num_warps", "maxnreg")}
        options = dict(num_warps=tile["num_warps"], maxnreg=tile.get("maxnreg", 0))
        kinds = ("one",) if name == "one" else (("one", "div16", "any") if name == one_tile else ("div16", "any"))
        for kind in kinds:
            yield name, consts, options, kind


def _bernoulli_extras(probs: bool, target_grad: bool, has_kl: bool) -> list[dict]:
    """The extras flags a Bernoulli launcher can pick (kernels/bernoulli.py): none for the fused
    loss; pos_weight with logits; the target gradient where asked for (float targets, gradients)."""
    if has_kl:
        return [dict(WEIGHTED=False, POS_WEIGHT=False, TARGET_GRAD=False)]
    return [
        dict(WEIGHTED=w, POS_WEIGHT=q, TARGET_GRAD=t)
        for w, q, t in itertools.product((False, True), sorted({False, not probs}), sorted({False, target_grad}))
    ]


def _extras_tile(tile: dict, warps: dict, name: str, extras: dict, extras_tiles: dict) -> tuple[dict, dict]:
    """``(constexprs, options)`` of a Bernoulli launch's tile: ``extras_tiles[name]`` when any extra is on."""
    if not any(extras.values()):
        return tile, warps
    chosen = extras_tiles[name]
    blocks = {k: v for k, v in chosen.items() if k in ("BLOCK_R", "BLOCK_D")}
    return dict(tile, **blocks), dict(num_warps=chosen["num_warps"], maxnreg=chosen.get("maxnreg", 0))


def _bernoulli_extra_types(extras: dict, p: str, acc: str) -> dict:
    """Argument types of the extras: given weights in the accumulator dtype, absent ones the input."""
    return dict(
        gx_ptr=p,
        w_ptr=acc if extras["WEIGHTED"] else p,
        w_sr="i64",
        w_sd="i64",
        q_ptr=acc if extras["POS_WEIGHT"] else p,
        q_sr="i64",
        q_sd="i64",
    )


def enumerate_specs() -> list[Spec]:
    from . import bernoulli as bn
    from . import gaussian_kl as gk
    from . import gaussian_log_likelihood as gl
    from . import noise
    from . import reduce as rd
    from . import reparameterize_kl as rk
    from ._common import (
        DATA_EXTRAS_TILES,
        DATA_TILES,
        FINISH_BLOCK,
        LATENT_BWD_TILES,
        LATENT_TILES,
        LOSS_KL_TILE,
        NOISE_BLOCK,
        data_tile_name,
        latent_tile_name,
    )

    i32, i64, f64 = "i32", "i64", "fp64"
    one_latent, one_data = latent_tile_name(1), data_tile_name(1)
    specs = [
        _spec(
            noise.randn_kernel,
            dict(off_ptr="*i64", out_ptr="*fp32", seed_ptr="*i64", N=i64),
            dict(BLOCK=NOISE_BLOCK),
            "int64 offsets",
        )
    ]
    # range-check only (reduce 'elements' / 'rows' of the Bernoulli ops): no dtype in it
    for check_in in (False, True):
        flags = dict(TOTAL=False, TWO_PARTS=False, CHECK_IN=check_in, CHECK_X=True, ASSERT=True)
        specs.append(
            _spec(
                rd.finish_kernel,
                dict(
                    part_ptr="*i32",
                    N=i64,
                    part2_ptr="*i32",
                    N2=i64,
                    out_ptr="*i32",
                    bad_in_ptr="*i32",
                    bad_x_ptr="*i32",
                    NB=i64,
                    count_ptr="*i32",
                ),
                dict(**flags, BLOCK=FINISH_BLOCK),
                "count " + _flags(**flags),
            )
        )
    for dt in DTYPE_NAMES:
        acc = "*fp64" if dt == "fp64" else "*fp32"
        p = "*" + dt
        # finish: 0-d sums (one or two row sets) into a loss (accumulator dtype: float32 for half
        # inputs) or, for one row set, into a shared log-variance gradient (the input dtype),
        # with or without the Bernoulli range check
        for out, two, check_in, check_x in (
            (acc, False, False, False),
            (p, False, False, False),
            (acc, True, False, False),
            (acc, False, False, True),
            (acc, False, True, True),
            (acc, True, False, True),
            (acc, True, True, True),
        ):
            flags = dict(TOTAL=True, TWO_PARTS=two, CHECK_IN=check_in, CHECK_X=check_x, ASSERT=True)
            specs.append(
                _spec(
                    rd.finish_kernel,
                    dict(
                        part_ptr=acc,
                        N=i64,
                        part2_ptr=acc,
                        N2=i64,
                        out_ptr=out,
                        bad_in_ptr="*i32",
                        bad_x_ptr="*i32",
                        NB=i64,
                        count_ptr="*i32",
                    ),
                    dict(**flags, BLOCK=FINISH_BLOCK),
                    f"{dt} out={out[1:]} " + _flags(**flags),
                )
            )
        for tname, tile, warps, kind in _tile_variants(LATENT_TILES, one_latent):
            tag = f"{dt} J={kind} {tname}"
            # reparameterize + KL
            for has_eps, logw, with_kl in itertools.product((False, True), repeat=3):
                specs.append(
                    _spec(
                        rk.reparameterize_kl_fwd_kernel,
                        dict(
                            mu_ptr=p,
                            v_ptr=p,
                            eps_ptr=p,
                            z_ptr=p,
                            kl_ptr=acc,
                            lq_ptr=acc,
                            lp_ptr=acc,
                            seed_ptr="*i64",
                            R=i64,
                            L=i32,
                        ),
                        dict(HAS_EPS=has_eps, LOG_WEIGHTS=logw, WITH_KL=with_kl, **tile),
                        f"{tag} " + _flags(HAS_EPS=has_eps, LOG_WEIGHTS=logw, WITH_KL=with_kl),
                        ("J", kind),
                        **warps,
                    )
                )
            # Gaussian KL: 'rows' and 'total' partials, both in the accumulator dtype
            for out, wg in itertools.product((acc,), (False, True)):
                specs.append(
                    _spec(
                        gk.gaussian_kl_fwd_kernel,
                        dict(mu_ptr=p, v_ptr=p, out_ptr=out, gmu_ptr=p, gv_ptr=p, R=i64, scale=f64),
                        dict(WITH_GRAD=wg, **tile),
                        f"{tag} out={out[1:]} " + _flags(WITH_GRAD=wg),
                        ("J", kind),
                        **warps,
                    )
                )
            specs.append(
                _spec(
                    gk.gaussian_kl_bwd_kernel,
                    dict(go_ptr=p, go_sr=i32, mu_ptr=p, v_ptr=p, gmu_ptr=p, gv_ptr=p, R=i64, scale=f64),
                    dict(**tile),
                    tag,
                    ("J", kind),
                    **warps,
                )
            )
        for tname, tile, warps, kind in _tile_variants(LATENT_BWD_TILES, one_latent):
            tag = f"{dt} J={kind} {tname}"
            for has_eps, need_z in ((False, False), (False, True), (True, True)):
                specs.append(
                    _spec(
                        rk.reparameterize_kl_bwd_kernel,
                        dict(
                            gz_ptr=p,
                            gz_s=i32,
                            glq_ptr=p,
                            glq_s=i32,
                            glp_ptr=p,
                            glp_s=i32,
                            gkl_ptr=p,
                            gkl_s=i32,
                            mu_ptr=p,
                            v_ptr=p,
                            eps_ptr=p,
                            gmu_ptr=p,
                            gv_ptr=p,
                            seed_ptr="*i64",
                            R=i64,
                            L=i32,
                        ),
                        dict(HAS_EPS=has_eps, NEED_Z=need_z, **tile),
                        f"{tag} " + _flags(HAS_EPS=has_eps, NEED_Z=need_z),
                        ("J", kind),
                        **warps,
                    )
                )
        for tname, tile, warps, kind in _tile_variants(DATA_TILES, one_data):
            tag = f"{dt} D={kind} {tname}"
            tile = dict(tile, **LOSS_KL_TILE)
            kl_args = dict(KR=i64, KJ=i32, kscale=f64)
            # Bernoulli (PROBS=0 logits, PROBS=1 probs): float targets of the same dtype, or uint8
            # (bool viewed). out: elements in the input dtype, rows and total partials in the
            # accumulator dtype; HAS_KL: the fused loss (total, KL rows in the same launch).
            # The drop-ins' extras (never with HAS_KL): WEIGHTED, POS_WEIGHT (logits; weights in the
            # accumulator dtype, absent ones point at the input), TARGET_GRAD (float targets, with
            # gradients).
            for xt, probs in itertools.product((p, "*u8"), (False, True)):
                variants = [(True, False, p, False)]
                variants += [(False, wg, acc, kl) for wg in (False, True) for kl in (False, True)]
                for elements, wg, out, has_kl in variants:
                    for extras in _bernoulli_extras(probs, xt == p and wg, has_kl):
                        flags = dict(PROBS=probs, ELEMENTS=elements, WITH_GRAD=wg, HAS_KL=has_kl, **extras)
                        btile, bwarps = _extras_tile(tile, warps, tname, extras, DATA_EXTRAS_TILES)
                        specs.append(
                            _spec(
                                bn.bernoulli_fwd_kernel,
                                dict(
                                    in_ptr=p,
                                    x_ptr=xt,
                                    out_ptr=out,
                                    grad_ptr=p,
                                    bad_in_ptr="*i32",
                                    bad_x_ptr="*i32",
                                    R=i64,
                                    B=i64,
                                    scale=f64,
                                    **_bernoulli_extra_types(extras, p, acc),
                                    kmu_ptr=p,
                                    kv_ptr=p,
                                    kout_ptr=acc if has_kl else p,
                                    kgmu_ptr=p,
                                    kgv_ptr=p,
                                    **kl_args,
                                ),
                                dict(**flags, **btile),
                                f"{tag} x={xt[1:]} out={out[1:]} " + _flags(**flags),
                                ("D", kind),
                                **bwarps,
                            )
                        )
                for extras in _bernoulli_extras(probs, xt == p, False):
                    btile, bwarps = _extras_tile(tile, warps, tname, extras, DATA_EXTRAS_TILES)
                    specs.append(
                        _spec(
                            bn.bernoulli_bwd_kernel,
                            dict(
                                go_ptr=p,
                                go_sr=i64,
                                go_sd=i32,
                                in_ptr=p,
                                x_ptr=xt,
                                grad_ptr=p,
                                R=i64,
                                B=i64,
                                scale=f64,
                                **_bernoulli_extra_types(extras, p, acc),
                            ),
                            dict(
                                PROBS=probs,
                                **extras,
                                **{k: v for k, v in btile.items() if k in ("BLOCK_R", "BLOCK_D")},
                            ),
                            f"{tag} x={xt[1:]} " + _flags(PROBS=probs, **extras),
                            ("D", kind),
                            **bwarps,
                        )
                    )
            # Gaussian decoder
            for shared in (False, True):
                for out, wg, has_kl in itertools.product((acc,), (False, True), (False, True)):
                    flags = dict(SHARED_V=shared, WITH_GRAD=wg, HAS_KL=has_kl)
                    specs.append(
                        _spec(
                            gl.gaussian_fwd_kernel,
                            dict(
                                x_ptr=p,
                                m_ptr=p,
                                v_ptr=p,
                                out_ptr=out,
                                gm_ptr=p,
                                gv_ptr=acc if (shared and wg) else p,
                                R=i64,
                                B=i64,
                                scale=f64,
                                kmu_ptr=p,
                                kv_ptr=p,
                                kout_ptr=acc if has_kl else p,
                                kgmu_ptr=p,
                                kgv_ptr=p,
                                **kl_args,
                            ),
                            dict(**flags, **tile),
                            f"{tag} out={out[1:]} " + _flags(**flags),
                            ("D", kind),
                            **warps,
                        )
                    )
                specs.append(
                    _spec(
                        gl.gaussian_bwd_kernel,
                        dict(
                            go_ptr=p,
                            go_sr=i32,
                            x_ptr=p,
                            m_ptr=p,
                            v_ptr=p,
                            gm_ptr=p,
                            gv_ptr=acc if shared else p,
                            R=i64,
                            B=i64,
                            scale=f64,
                        ),
                        dict(SHARED_V=shared, **{k: v for k, v in tile.items() if k in ("BLOCK_R", "BLOCK_D")}),
                        f"{tag} " + _flags(SHARED_V=shared),
                        ("D", kind),
                        **warps,
                    )
                )
    return specs


def compile_one(spec: Spec, arch: int):
    """Compile one spec for ``sm_<arch>``; returns the CompiledKernel (asm: ttir ... ptx, cubin).

    Options are the launchers': ``num_warps`` of the tile, FMA contraction on (``launch`` pins
    it), ``debug`` as the kernel declares it (``finish_kernel``: its device-side assert)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # 16-byte aligned pointers, as the JIT sees for fresh torch allocations; the width hint
    attrs = {(spec.kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in spec.ptr_args + spec.div16_args}
    src = ASTSource(spec.kernel, spec.signature, spec.constexprs, attrs)
    options = dict(num_warps=spec.num_warps, enable_fp_fusion=True, debug=bool(spec.kernel.debug))
    if spec.maxnreg:
        options["maxnreg"] = spec.maxnreg
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


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


def _compile_task(task):
    """Worker: compile spec number ``idx`` for ``arch``; returns a plain, picklable record."""
    arch, idx = task
    spec = enumerate_specs()[idx]
    t0 = time.perf_counter()
    rec = dict(
        kernel=spec.name,
        config=spec.label,
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
    specs = enumerate_specs()
    tasks = [(arch, i) for arch in args.arch for i, s in enumerate(specs) if args.filter in s.name]
    t_all = time.perf_counter()
    print(
        f"{'kernel':30} {'config':62} {'arch':>5} {'status':6} {'ptx':>7} {'cubin':>7} {'reg':>4} {'stk':>4} "
        f"{'smem':>5} {'v4':>4} {'sec':>5}",
        flush=True,
    )
    if args.jobs > 1:
        import concurrent.futures as cf
        import multiprocessing as mp

        with cf.ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            results = pool.map(_compile_task, tasks)
            records = [_print_record(r) for r in results]
    else:
        records = [_print_record(_compile_task(t)) for t in tasks]
    wall = time.perf_counter() - t_all
    for arch in args.arch:
        mine = [r for r in records if r["arch"] == arch]
        print(
            f"# sm_{arch}: {sum(r['ok'] for r in mine)}/{len(mine)} configs of "
            f"{len({r['kernel'] for r in mine})} kernels compiled, {sum(r['sec'] for r in mine):.1f}s compile time"
        )
        for name in sorted({r["kernel"] for r in mine}):
            regs = [r["reg"] for r in mine if r["kernel"] == name]
            spills = sum(r["stack"] > 0 or r["local"] > 0 for r in mine if r["kernel"] == name)
            print(f"#   {name:30} registers {min(regs)}-{max(regs)}, configs with spills: {spills}")
    failures = sum(not r["ok"] for r in records)
    print(
        f"# total: {len(records) - failures}/{len(records)} compiled, {failures} failed, {wall:.1f}s wall", flush=True
    )
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(dict(records=records, wall=wall), f)
    return 1 if failures else 0


def _print_record(r: dict) -> dict:
    status = "ok" if r["ok"] else "FAIL"
    print(
        f"{r['kernel']:30} {r['config']:62} {'sm_' + str(r['arch']):>5} {status:6} "
        f"{r['ptx']:7d} {r['cubin']:7d} {r['reg']:4d} {r['stack']:4d} {r['shared']:5d} {r['v4_loads']:4d} "
        f"{r['sec']:5.2f}",
        flush=True,
    )
    if r["error"]:
        print(f"  {r['kernel']} [{r['config']}] sm_{r['arch']}: {r['error']}", file=sys.stderr, flush=True)
    return r


if __name__ == "__main__":
    sys.exit(main())
