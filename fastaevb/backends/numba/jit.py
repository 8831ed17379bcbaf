"""The ``kernel`` decorator of the numba backend: ``njit`` with an on-disk cache that knows all
the backend's sources.

numba's ``cache=True`` keys a cached function on the hash of *its own* source file only. The
kernels inline helpers from ``math`` and ``philox``, so after an edit of a
helper (or an upgrade of fastaevb that leaves old ``__pycache__/*.nbi`` files behind) plain
``cache=True`` would silently load stale machine code. Here the cache index is stamped with
the hash of every backend source file as well, so any change recompiles.

Only public extension points of numba's caching are subclassed (the locator classes a
``CacheImpl`` tries, and ``get_source_stamp``); the cache is attached the way
``Dispatcher.enable_caching`` does it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from numba import njit
from numba.core.caching import CompileResultCacheImpl, FunctionCache
from numba.core.dispatcher import Dispatcher

_SOURCES = ("jit.py", "scalars.py", "math.py", "vecmath.py", "philox.py", "kernels.py")


def _sources_digest() -> str:
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in _SOURCES:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


_DIGEST = _sources_digest()


def _stamped(locator: type) -> type:
    """``locator`` whose source stamp also covers every backend source file."""

    def get_source_stamp(self):
        return (locator.get_source_stamp(self), _DIGEST)  # type: ignore[attr-defined]  # numba's locators are untyped

    return type(f"FastaevbStamped{locator.__name__}", (locator,), {"get_source_stamp": get_source_stamp})


class _CacheImpl(CompileResultCacheImpl):
    _locator_classes = [_stamped(cls) for cls in CompileResultCacheImpl._locator_classes]  # type: ignore[misc]  # untyped in numba


class _Cache(FunctionCache):
    _impl_class = _CacheImpl


def kernel(fastmath=False, **options):
    """``njit(cache=True, fastmath=False, **options)`` with the backend-wide cache stamp (``fastmath``
    may name flags, e.g. ``{"reassoc"}`` for a sum LLVM may vectorize)."""

    def decorate(func):
        dispatcher = njit(cache=False, fastmath=fastmath, **options)(func)
        if isinstance(dispatcher, Dispatcher):  # not under NUMBA_DISABLE_JIT
            try:
                dispatcher._cache = _Cache(func)  # type: ignore[attr-defined]  # numba's cache hook
            except RuntimeError:  # no writable cache directory: compile every run
                pass
        return dispatcher

    return decorate
