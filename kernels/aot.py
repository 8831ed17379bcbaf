"""Ahead-of-time compile every Triton kernel of fastaevb for sm_80 / sm_90, without a GPU.

    python -m fastaevb.kernels.aot --arch 80 90      (or: python kernels/aot.py --arch 80 90)

Enumerates each kernel with every specialization its launcher can produce: every dtype in
DTYPES (target pointer float-of-that-dtype or uint8 for the Bernoulli ops), every constexpr
flag combination, and the one tile each launcher uses. Scalar int arguments are
``do_not_specialize`` (and annotated), so the signature below is exactly what the JIT
compiles; pointers are assumed 16-byte aligned (as fresh torch allocations are; a
misaligned view makes the JIT compile one more, unhinted, variant).

Lowers through ptxas (bundled with triton) via ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", arch, 32))``. Prints one row per kernel/config/arch; exits 1 if any
failed. Refuses to run under TRITON_INTERPRET=1 (the interpreter replaces the compiler).
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
    __package__ = os.path.basename(_here)  # noqa: A001
    importlib.import_module(__package__)

DTYPE_NAMES = ("fp32", "fp64", "fp16", "bf16")  # DTYPES of the backend, as triton type strings


@dataclass
class Spec:
    kernel: object  # JITFunction
    signature: dict  # arg name -> triton type string or "constexpr"
    constexprs: dict
    label: str = ""
    ptr_args: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__


def _spec(kernel, types: dict, constexprs: dict, label: str) -> Spec:
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        else:
            sig[name] = types[name]
    return Spec(kernel, sig, constexprs, label, [n for n in kernel.arg_names if sig[n].startswith("*")])


def _flags(**kw) -> str:
    return ",".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in kw.items())


def enumerate_specs() -> list[Spec]:
    from . import bernoulli as bn
    from . import gaussian_kl as gk
    from . import gaussian_log_likelihood as gl
    from . import noise
    from . import reparameterize_kl as rk
    from ._common import DATA_TILE, LATENT_TILE, NOISE_BLOCK

    i32, i64, f64 = "i32", "i64", "fp64"
    specs = [_spec(noise.randn_kernel, dict(off_ptr="*i64", out_ptr="*fp32", seed=i64, N=i32),
                   dict(BLOCK=NOISE_BLOCK), "int64 offsets")]
    for dt in DTYPE_NAMES:
        acc = "fp64" if dt == "fp64" else "fp32"
        p = "*" + dt
        # reparameterize + KL
        for has_eps, logw, with_kl in itertools.product((False, True), repeat=3):
            specs.append(_spec(rk.reparameterize_kl_fwd_kernel,
                               dict(mu_ptr=p, v_ptr=p, eps_ptr=p, z_ptr=p, kl_ptr=p, lq_ptr=p, lp_ptr=p,
                                    R=i32, J=i32, L=i32, seed=i64),
                               dict(HAS_EPS=has_eps, LOG_WEIGHTS=logw, WITH_KL=with_kl, **LATENT_TILE),
                               f"{dt} " + _flags(HAS_EPS=has_eps, LOG_WEIGHTS=logw, WITH_KL=with_kl)))
        for has_eps, need_z in ((False, False), (False, True), (True, True)):
            specs.append(_spec(rk.reparameterize_kl_bwd_kernel,
                               dict(gz_ptr=p, gz_s=i32, glq_ptr=p, glq_s=i32, glp_ptr=p, glp_s=i32,
                                    gkl_ptr=p, gkl_s=i32, mu_ptr=p, v_ptr=p, eps_ptr=p, gmu_ptr=p, gv_ptr=p,
                                    R=i32, J=i32, L=i32, seed=i64),
                               dict(HAS_EPS=has_eps, NEED_Z=need_z, **LATENT_TILE),
                               f"{dt} " + _flags(HAS_EPS=has_eps, NEED_Z=need_z)))
        # Gaussian KL
        for wg in (False, True):
            specs.append(_spec(gk.gaussian_kl_fwd_kernel,
                               dict(mu_ptr=p, v_ptr=p, out_ptr="*" + acc, gmu_ptr=p, gv_ptr=p, R=i32, J=i32, scale=f64),
                               dict(WITH_GRAD=wg, **LATENT_TILE), f"{dt} " + _flags(WITH_GRAD=wg)))
        specs.append(_spec(gk.gaussian_kl_bwd_kernel,
                           dict(go_ptr=p, go_sr=i32, mu_ptr=p, v_ptr=p, gmu_ptr=p, gv_ptr=p, R=i32, J=i32, scale=f64),
                           dict(**LATENT_TILE), dt))
        # Bernoulli (PROBS=0 logits, PROBS=1 probs): float targets of the same dtype, or uint8
        # (bool viewed)
        for xt, probs in itertools.product((p, "*u8"), (False, True)):
            for elements, wg in ((True, False), (False, False), (False, True)):
                flags = dict(PROBS=probs, ELEMENTS=elements, WITH_GRAD=wg)
                specs.append(_spec(bn.bernoulli_fwd_kernel,
                                   dict(in_ptr=p, x_ptr=xt, out_ptr=p if elements else "*" + acc, grad_ptr=p,
                                        bad_in_ptr="*i32", bad_x_ptr="*i32", R=i32, B=i32, D=i32, scale=f64),
                                   dict(**flags, **DATA_TILE), f"{dt} x={xt[1:]} " + _flags(**flags)))
            specs.append(_spec(bn.bernoulli_bwd_kernel,
                               dict(go_ptr=p, go_sr=i32, go_sd=i32, in_ptr=p, x_ptr=xt, grad_ptr=p,
                                    R=i32, B=i32, D=i32, scale=f64),
                               dict(PROBS=probs, **DATA_TILE), f"{dt} x={xt[1:]} " + _flags(PROBS=probs)))
        # Gaussian decoder
        for shared in (False, True):
            for wg in (False, True):
                specs.append(_spec(gl.gaussian_fwd_kernel,
                                   dict(x_ptr=p, m_ptr=p, v_ptr=p, out_ptr="*" + acc, gm_ptr=p,
                                        gv_ptr="*" + acc if (shared and wg) else p,
                                        R=i32, B=i32, D=i32, scale=f64),
                                   dict(SHARED_V=shared, WITH_GRAD=wg, **DATA_TILE),
                                   f"{dt} " + _flags(SHARED_V=shared, WITH_GRAD=wg)))
            specs.append(_spec(gl.gaussian_bwd_kernel,
                               dict(go_ptr=p, go_sr=i32, x_ptr=p, m_ptr=p, v_ptr=p, gm_ptr=p,
                                    gv_ptr="*" + acc if shared else p, R=i32, B=i32, D=i32, scale=f64),
                               dict(SHARED_V=shared, **DATA_TILE), f"{dt} " + _flags(SHARED_V=shared)))
    return specs


def compile_one(spec: Spec, arch: int):
    """Compile one spec for ``sm_<arch>``; returns the CompiledKernel (asm: ttir ... ptx, cubin)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # 16-byte aligned pointers, as the JIT sees for fresh torch allocations
    attrs = {(spec.kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in spec.ptr_args}
    src = ASTSource(spec.kernel, spec.signature, spec.constexprs, attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32))


def _compile_task(task):
    """Worker: compile spec number ``idx`` for ``arch``; returns a plain, picklable record."""
    arch, idx = task
    spec = enumerate_specs()[idx]
    t0 = time.perf_counter()
    rec = dict(kernel=spec.name, config=spec.label, arch=arch, ok=False, ptx=0, cubin=0, error="")
    try:
        ck = compile_one(spec, arch)
        ptx, cubin = ck.asm.get("ptx", ""), ck.asm.get("cubin", b"")
        rec.update(ptx=len(ptx), cubin=len(cubin),
                   ok=bool(ptx) and bool(cubin) and f".target sm_{arch}" in ptx)
        if not rec["ok"]:
            rec["error"] = "empty PTX/cubin or wrong .target"
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
        print("fastaevb.kernels.aot: TRITON_INTERPRET is set; the interpreter replaces the compiler, "
              "so nothing would be compiled. Unset it (e.g. `env -u TRITON_INTERPRET ...`) and rerun.",
              file=sys.stderr)
        return 2
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silence the 3.9 default-change warning
    specs = enumerate_specs()
    tasks = [(arch, i) for arch in args.arch for i, s in enumerate(specs) if args.filter in s.name]
    t_all = time.perf_counter()
    print(f"{'kernel':30} {'config':40} {'arch':>5} {'status':6} {'ptx':>7} {'cubin':>7} {'sec':>5}", flush=True)
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
        print(f"# sm_{arch}: {sum(r['ok'] for r in mine)}/{len(mine)} configs of "
              f"{len({r['kernel'] for r in mine})} kernels compiled, {sum(r['sec'] for r in mine):.1f}s compile time")
    failures = sum(not r["ok"] for r in records)
    print(f"# total: {len(records) - failures}/{len(records)} compiled, {failures} failed, {wall:.1f}s wall", flush=True)
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(dict(records=records, wall=wall), f)
    return 1 if failures else 0


def _print_record(r: dict) -> dict:
    status = "ok" if r["ok"] else "FAIL"
    print(f"{r['kernel']:30} {r['config']:40} {'sm_' + str(r['arch']):>5} {status:6} "
          f"{r['ptx']:7d} {r['cubin']:7d} {r['sec']:5.2f}", flush=True)
    if r["error"]:
        print(f"  {r['kernel']} [{r['config']}] sm_{r['arch']}: {r['error']}", file=sys.stderr, flush=True)
    return r


if __name__ == "__main__":
    sys.exit(main())
