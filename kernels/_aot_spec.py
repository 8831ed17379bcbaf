"""The ahead-of-time specializations of the kernels, as each kernel module declares them.

Each kernel module has an ``aot_specs()`` beside its tiles and launchers: it calls its own entry
points over their whole domain (every dtype of ``DTYPES``, every width class of its tile table,
every reduction, wanted output and flag the entry takes) on tiny CPU tensors inside
:func:`recording`, where ``_common.launch`` hands each launch to a :class:`Recorder` instead of
running it. A recorded launch becomes the :class:`Spec` Triton's JIT would compile for it on CUDA:
the JIT's own binder gives the signature, the constexprs (the row width 1 becomes a constant),
the divisibility-16 hints (aligned pointers, widths divisible by 16), and the launch options are
the launcher's (``num_warps``, ``maxnreg``, FMA contraction, ``debug`` as the kernel declares
it). So no kernel signature is written twice: the AOT table is what the launchers launch, and
``aot.py`` only compiles it. Launches run the CUDA path (``device_checks``: the range check's
device-side assert, no host read).

Width classes: the JIT specializes a row width (D or J, the kernels' only specialized ints) to the
constant 1 ('one'), an int32 divisible by 16 ('div16', the hint that gives vector loads) or a
plain int32 ('any'); :func:`widths` gives one width per (tile, width kind) a tile picker can reach.

Imports Triton's runtime (its binder), not its compiler, and needs no GPU; interpreted kernels
(``TRITON_INTERPRET=1``) have no binder, so recording refuses to run under the interpreter.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from . import _common

WIDTH_KINDS = ("one", "div16", "any")
ROWS, DATA_ROWS = 4, 2  # decoder rows r read data row r % DATA_ROWS: the broadcast case


@dataclass(frozen=True)
class Spec:
    """One compile: a kernel, its signature and constexprs as the JIT binds them, and options."""

    module: str  # the kernel's module and name (a Spec is plain data: it pickles to AOT workers)
    kernel_name: str
    signature: tuple  # ((argument, triton type or "constexpr"), ...) in argument order
    constexprs: tuple  # ((argument, value), ...)
    div16: tuple  # arguments with the tt.divisibility=16 hint (aligned pointers, the width)
    options: tuple  # ((option, value), ...): num_warps, maxnreg, enable_fp_fusion, debug
    width: str  # "D=div16", "J=one", ... ("" for a kernel without a specialized width)
    tile: str  # "<table>.<tile>" of _common.TILE_TABLES ("" for a fixed block)
    label: str

    @property
    def name(self) -> str:
        return self.kernel_name

    @property
    def kernel(self):
        return getattr(importlib.import_module(self.module), self.kernel_name)

    @property
    def key(self) -> tuple:
        return (self.module, self.kernel_name, self.signature, self.constexprs, self.div16, self.options)

    @property
    def width_kind(self) -> str:
        return self.width.partition("=")[2]

    @property
    def flags(self) -> dict:
        """The constexpr flags (neither blocks nor the width constant)."""
        return {k: v for k, v in self.constexprs if not _is_block(k) and not self.width.startswith(f"{k}=")}


def _is_block(name: str) -> bool:
    return "BLOCK" in name


def _tile_name(options: dict) -> str:
    for table, tiles in _common.TILE_TABLES.items():
        for name, tile in tiles.items():
            if all(options.get(k) == v for k, v in tile.items()) and ("maxnreg" in tile) == ("maxnreg" in options):
                return f"{table}.{name}"
    return ""


def _flag(value) -> str:
    return str(int(value)) if isinstance(value, bool) else str(value)


_BINDERS: dict = {}


def _binder(kernel) -> Callable:
    """The JIT's own argument binder for ``kernel`` (what ``kernel[grid](...)`` specializes with)."""
    if kernel not in _BINDERS:
        from triton.backends.compiler import BaseBackend
        from triton.runtime.jit import JITFunction, create_function_from_signature

        if not isinstance(kernel, JITFunction):
            raise RuntimeError(
                "AOT specs need compiled (not interpreted) kernels: unset TRITON_INTERPRET before importing them"
            )
        # the NVIDIA backend keeps BaseBackend's specialization rules (alignment, divisibility 16)
        _BINDERS[kernel] = create_function_from_signature(kernel.signature, kernel.params, BaseBackend)
    return _BINDERS[kernel]


def resolve(kernel, args: tuple, kwargs: dict) -> Spec:
    """The Spec of one launch ``kernel[grid](*args, **kwargs)`` (``kwargs``: constexprs and options)."""
    bound, specialization, _ = _binder(kernel)(*args, **kwargs)
    names = list(bound)
    signature = tuple((n, ty) for n, (ty, _) in zip(names, specialization, strict=True))
    constexprs = tuple((n, bound[n]) for n, ty in signature if ty == "constexpr")
    div16 = tuple(n for n, (ty, attr) in zip(names, specialization, strict=True) if ty != "constexpr" and attr == "D")
    options = dict(sorted((k, v) for k, v in kwargs.items() if k not in bound))
    options["debug"] = bool(kernel.debug)
    widths = [
        p.name
        for p in kernel.params
        if not (p.is_constexpr or p.do_not_specialize or p.annotation_type) and isinstance(bound[p.name], int)
    ]
    width = ""
    for n in widths:
        ty = dict(signature)[n]
        width = f"{n}={'one' if ty == 'constexpr' else 'div16' if n in div16 else 'any'}"
    tile = _tile_name({**dict(constexprs), **options})
    pointers = [(n, ty[1:]) for n, ty in signature if ty.startswith("*")]
    main = pointers[0][1]
    others = [f"{n.removesuffix('_ptr')}={ty}" for n, ty in pointers if ty not in (main, "i32", "i64")]
    spec = Spec(
        kernel.fn.__module__,
        kernel.fn.__name__,
        signature,
        constexprs,
        div16,
        tuple(options.items()),
        width,
        tile,
        "",
    )
    flags = ",".join(f"{k}={_flag(v)}" for k, v in spec.flags.items())
    label = " ".join(part for part in (main, width, tile, *others, flags) if part)
    return Spec(**{**spec.__dict__, "label": label})


class Recorder:
    """Collects the distinct Specs of the launches made while it is ``_common.recorder``."""

    def __init__(self) -> None:
        self._specs: dict[tuple, Spec] = {}

    def __call__(self, kernel, args: tuple, kwargs: dict) -> None:
        spec = resolve(kernel, args, kwargs)
        self._specs.setdefault(spec.key, spec)

    @property
    def specs(self) -> list[Spec]:
        return list(self._specs.values())


@contextlib.contextmanager
def recording() -> Iterator[Recorder]:
    """Launches are recorded, not run, with the CUDA code path's choices (device-side checks)."""
    saved = _common.recorder, _common.device_checks
    recorder = Recorder()
    _common.recorder, _common.device_checks = recorder, True
    try:
        yield recorder
    finally:
        _common.recorder, _common.device_checks = saved


def widths(tile_name: Callable[[int], str], limit: int = 4096) -> list[int]:
    """One row width per (tile, width kind) that ``tile_name`` (a tile picker of ``_common``) reaches:
    the smallest width of each class, widths up to ``limit``."""
    found: dict[tuple[str, str], int] = {}
    for w in range(1, limit + 1):
        kind = "one" if w == 1 else "div16" if w % 16 == 0 else "any"
        found.setdefault((tile_name(w), kind), w)
    return sorted(found.values())


# --- outputs as the op layer allocates them (docs/backends.md) -----------------------------------


def rows(dtype: torch.dtype, width: int, n: int = ROWS) -> torch.Tensor:
    """A contiguous ``(n, width)`` input (values never read: launches are recorded)."""
    return torch.zeros(n, width, dtype=dtype)


def value_out(like: torch.Tensor, reduction: str) -> torch.Tensor:
    """The op's value: ``like``'s shape in its dtype ('none'), or ``(R,)`` / 0-d in the value dtype."""
    if reduction == "none":
        return torch.empty_like(like)
    shape = (like.shape[0],) if reduction == "rows" else ()
    return torch.empty(shape, dtype=_common.acc_dtype(like.dtype))


def upstream(like: torch.Tensor, reduction: str) -> torch.Tensor:
    """The upstream gradient of :func:`value_out` (the op layer passes it in the value dtype)."""
    return torch.ones_like(value_out(like, reduction))


def grads(*likes: torch.Tensor, wanted: bool = True) -> tuple[torch.Tensor, ...]:
    """Gradient slots: each ``like``'s shape and dtype when wanted, else an empty ``(0,)`` each."""
    return tuple(torch.empty_like(t) if wanted else t.new_empty(0) for t in likes)
