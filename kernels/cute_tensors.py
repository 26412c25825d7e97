"""torch tensors -> CuTe tensors for the kernels, and the matching compile-time placeholders.

Why one module: the compiled kernel's signature is fixed by the placeholders it was compiled with
(:func:`fake_tensor`), and every call must hand it tensors of exactly that type (:func:`to_cute`).
Keeping both here keeps them in step.  Both are *dynamic*: every extent and every stride except
the innermost one (stride 1) is a run-time value, so one compile serves every batch, spatial size,
head count and any strided view with a contiguous last dim.  Nothing is copied, and nothing
synchronizes with the host, so calls can be captured in CUDA graphs and traced by torch.compile.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import torch

# 16 bytes: what TMA needs of the base address and of every non-innermost stride.
ALIGN_BYTES = 16

_TORCH_TO_NAME = {
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float32: "float32",
    torch.int32: "int32",
}


def dtype_name(dtype: torch.dtype) -> str:
    """The string the kernel configs use for a torch dtype (``FwdConfig.dtype``)."""
    try:
        return _TORCH_TO_NAME[dtype]
    except KeyError:
        raise TypeError(f"dtype={dtype} has no CuTe kernel type (supported: {list(_TORCH_TO_NAME.values())})")


def cute_dtype(name: str) -> Any:
    """The ``cutlass`` numeric type for a dtype name (``"float16"`` -> ``cutlass.Float16``)."""
    import cutlass

    types = {
        "float16": cutlass.Float16,
        "bfloat16": cutlass.BFloat16,
        "float32": cutlass.Float32,
        "int32": cutlass.Int32,
    }
    try:
        return types[name]
    except KeyError:
        raise TypeError(f"dtype={name!r} has no CuTe kernel type (supported: {list(types)})")


def to_cute(t: torch.Tensor, align: int = ALIGN_BYTES) -> Any:
    """Zero-copy CuTe view of ``t``: dynamic extents and strides, innermost stride 1.

    ``align``: the base-pointer alignment the kernel was compiled for (:func:`fake_tensor`).
    ``from_dlpack`` is asked not to synchronize streams; the caller launches on the current stream.
    """
    from cutlass.cute.runtime import from_dlpack

    return from_dlpack(t.detach(), assumed_align=align).mark_layout_dynamic(leading_dim=t.dim() - 1)


def fake_tensor(dtype: str, rank: int, align: int = ALIGN_BYTES) -> Any:
    """Compile-time placeholder of the same type :func:`to_cute` produces for a rank-``rank`` tensor.

    ``align`` (bytes) is what the kernel may assume of the base pointer, and what calls must meet:
    16 for tensors TMA touches; a tensor stored element by element needs only its element size.
    """
    import cutlass.cute as cute
    from cutlass.cute.runtime import make_fake_tensor

    shape = tuple(cute.sym_int32() for _ in range(rank))
    stride = tuple(cute.sym_int64() for _ in range(rank - 1)) + (1,)
    return make_fake_tensor(cute_dtype(dtype), shape, stride, assumed_align=align)


@lru_cache(maxsize=None)
def use_tvm_ffi() -> bool:
    """Whether kernels are compiled for the DSL's TVM-FFI calling convention.

    With it, a call takes the torch tensors themselves and torch's current stream (no DLPack views
    built in Python: about 10x less host time per call); without it (``apache-tvm-ffi`` not
    installed, or ``GNA_CUTE_TVM_FFI=0``), calls pass :func:`to_cute` views and the stream.
    Both conventions passed the whole sm90 GPU suite on the H100.
    """
    if os.environ.get("GNA_CUTE_TVM_FFI", "1") in ("0", "false", "False"):
        return False
    try:
        import tvm_ffi  # noqa: F401
    except ImportError:
        return False
    return True


def fake_stream(tvm_ffi: bool = False) -> Any:
    """Compile-time placeholder of the launch stream (under TVM-FFI: the caller's current stream)."""
    from cutlass.cute.runtime import make_fake_stream

    return make_fake_stream(use_tvm_ffi_env_stream=tvm_ffi)


def current_stream(device: torch.device) -> Any:
    """torch's current stream on ``device`` as the driver handle the kernels launch on."""
    from cuda.bindings import driver

    return driver.CUstream(torch.cuda.current_stream(device).cuda_stream)


def layout_problem(name: str, t: torch.Tensor) -> str | None:
    """Why ``t`` cannot be viewed by :func:`to_cute` for a TMA kernel, or None.

    The last dim must be contiguous, and the base address and every other stride 16-byte aligned.
    """
    *outer, last = t.stride()  # one call into torch for all strides
    if last != 1:
        return f"{name} must have a contiguous last dim (stride {last} != 1); pass {name}.contiguous()"
    if t.data_ptr() % ALIGN_BYTES:
        return f"{name}'s data pointer is not {ALIGN_BYTES}-byte aligned"
    item = t.element_size()
    for dim, stride in enumerate(outer):
        if (stride * item) % ALIGN_BYTES:
            return f"{name}.stride({dim})={stride} elements is not a multiple of {ALIGN_BYTES} bytes"
    return None
