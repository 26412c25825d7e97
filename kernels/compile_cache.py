"""Compile each kernel configuration once: in memory per process, on disk across processes.

A CuTe DSL compile of an attention kernel takes seconds; a call takes microseconds.  The key is
the kernel's frozen config dataclass (``FwdConfig``): equal configs share one compiled function.
The disk copy is the DSL's ahead-of-time export (``JitCompiledFunction.export_to_c`` writes a host
object file with the cubin inside; ``cute.runtime.load_module`` links it back in milliseconds),
stored under a directory named by the DSL version, the machine type and a fingerprint of the
kernel sources, so editing a kernel or upgrading the DSL never serves a stale binary.

Environment:
- ``GNA_CUTE_CACHE_DIR``: where the disk cache lives (default ``$XDG_CACHE_HOME/gna_cute`` or
  ``~/.cache/gna_cute``);
- ``GNA_CUTE_DISK_CACHE=0``: in-memory cache only.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import multiprocessing
import os
import platform
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable

# Symbol prefix inside every exported object file; each file is loaded into its own engine.
_EXPORT_NAME = "gna_kernel"


@dataclass
class CacheStats:
    """What the cache did in this process (for tests and the timing table in docs/kernels.md)."""

    compiles: int = 0
    disk_loads: int = 0
    memory_hits: int = 0
    compile_s: float = 0.0
    disk_load_s: float = 0.0
    export_failures: int = 0
    last_export_error: str = ""


def default_root() -> Path:
    """The disk cache's root directory, from the environment."""
    if root := os.environ.get("GNA_CUTE_CACHE_DIR"):
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "gna_cute"


def disk_cache_enabled() -> bool:
    return os.environ.get("GNA_CUTE_DISK_CACHE", "1") not in ("0", "", "false", "False")


@lru_cache(maxsize=None)
def source_fingerprint() -> str:
    """Hash of everything that shapes a compiled kernel: kernel sources, window math, DSL version.

    Hashes ``kernels/*.py`` (this package) and ``gna_cute/neighborhood.py`` by name and content,
    plus the CuTe DSL version and the host machine type (the object file holds host code).
    """
    import cutlass

    from gna_cute import neighborhood

    h = hashlib.sha256()
    h.update(f"cutlass-dsl={cutlass.__version__};machine={platform.machine()}".encode())
    sources = sorted(Path(__file__).resolve().parent.glob("*.py")) + [Path(neighborhood.__file__).resolve()]
    for src in sources:
        data = src.read_bytes()
        h.update(f"{src.parent.name}/{src.name}:{len(data)}:".encode())
        h.update(data)
    return h.hexdigest()[:20]


def key_digest(key: Hashable) -> str:
    """Stable file name for a key: its ``repr`` (frozen dataclasses of ints/strs/tuples) hashed."""
    return hashlib.sha256(repr(key).encode()).hexdigest()[:32]


class KernelCache:
    """``get(key)`` returns the compiled kernel for ``key``, compiling at most once per key.

    Lookup order: this process's dictionary, then the disk cache, then ``build(key)`` (which must
    return the ``cute.compile`` result); a fresh compile is exported to disk for the next process.
    A disk entry that fails to load is treated as a miss and overwritten.
    """

    def __init__(
        self,
        name: str,
        build: Callable[[Hashable], Any],
        root: Path | None = None,
        uses_tvm_ffi: Callable[[Hashable], bool] = lambda key: False,
    ):
        self.name = name
        self._build = build
        self._uses_tvm_ffi = uses_tvm_ffi
        self._root = root
        self._memory: dict[Hashable, Any] = {}
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def directory(self) -> Path | None:
        """Where this cache's entries live for the current sources, or None when disabled."""
        if not disk_cache_enabled():
            return None
        return (self._root or default_root()) / self.name / source_fingerprint()

    def get(self, key: Hashable) -> Any:
        fn = self._memory.get(key)
        if fn is not None:
            self.stats.memory_hits += 1
            return fn
        with self._lock:
            fn = self._memory.get(key)
            if fn is None:
                fn = self._load(key)
            if fn is None:
                fn = self._compile(key)
            self._memory[key] = fn
        return fn

    def __contains__(self, key: Hashable) -> bool:
        return key in self._memory

    def clear_memory(self) -> None:
        """Forget this process's compiled functions (the disk cache stays)."""
        with self._lock:
            self._memory.clear()

    def _entry(self, key: Hashable) -> tuple[Path, Path] | None:
        directory = self.directory()
        if directory is None:
            return None
        stem = key_digest(key)
        return directory / f"{stem}.o", directory / f"{stem}.key"

    def _load(self, key: Hashable) -> Any:
        entry = self._entry(key)
        if entry is None:
            return None
        obj, key_file = entry
        try:
            if not obj.exists() or key_file.read_text() != repr(key):
                return None
        except OSError:
            return None
        from cutlass import cute

        t0 = time.perf_counter()
        tvm_ffi = self._uses_tvm_ffi(key)
        try:
            if tvm_ffi:
                _preload_runtime_libraries()
            fn = getattr(cute.runtime.load_module(str(obj), enable_tvm_ffi=tvm_ffi), _EXPORT_NAME)
        except Exception:  # a truncated or foreign file: recompile and overwrite it
            return None
        self.stats.disk_loads += 1
        self.stats.disk_load_s += time.perf_counter() - t0
        return fn

    def _compile(self, key: Hashable) -> Any:
        t0 = time.perf_counter()
        fn = self._build(key)
        self.stats.compiles += 1
        self.stats.compile_s += time.perf_counter() - t0
        self._store(key, fn)
        return fn

    def _store(self, key: Hashable, fn: Any) -> None:
        """Export ``fn`` next to its key; written under temporary names, then renamed into place."""
        entry = self._entry(key)
        if entry is None:
            return
        obj, key_file = entry
        try:
            obj.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=obj.parent) as tmp:
                if self._uses_tvm_ffi(key):  # the TVM-FFI function's export takes the file path
                    fn.export_to_c(str(Path(tmp) / "kernel.o"), _EXPORT_NAME)
                else:
                    fn.export_to_c(tmp, "kernel", _EXPORT_NAME)
                tmp_key = Path(tmp) / "key"
                tmp_key.write_text(repr(key))
                os.replace(tmp_key, key_file)
                os.replace(Path(tmp) / "kernel.o", obj)
        except Exception as e:  # read-only/full disk, or a kernel the DSL cannot export
            self.stats.export_failures += 1
            self.stats.last_export_error = f"{type(e).__name__}: {e}"
            if self.stats.export_failures == 1:
                warnings.warn(f"gna_cute: compiled kernel not saved to the disk cache ({e})", stacklevel=3)


@lru_cache(maxsize=None)
def _preload_runtime_libraries() -> None:
    """Load the DSL runtime with global symbols before linking a TVM-FFI object file.

    ``load_module`` opens the runtime libraries locally; an exported TVM-FFI object then fails to
    resolve runtime symbols (FlashAttention-4's cache hit the same; it preloads them this way).
    """
    import ctypes

    from cutlass import cute

    for path in cute.runtime.find_runtime_libraries(enable_tvm_ffi=False):
        if Path(path).exists():
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def warm(fn: Callable[[Hashable], Any], keys: Iterable[Hashable], workers: int) -> list[BaseException | None]:
    """Run ``fn(key)`` for every key in ``workers`` fresh processes (``spawn``); per key, the error.

    ``fn`` must be a module-level function that compiles ``key`` through a disk-backed
    :class:`KernelCache`, so the parent process (and later ones) then load instead of compiling.
    Compiles are CPU-bound and single-threaded, so this turns N compiles into about N / workers.
    """
    keys = list(keys)
    if workers <= 1 or len(keys) <= 1:
        errors: list[BaseException | None] = []
        for k in keys:
            try:
                fn(k)
                errors.append(None)
            except Exception as e:  # reported per key, like the parallel path
                errors.append(e)
        return errors
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(fn, k) for k in keys]
        return [f.exception() for f in futures]
