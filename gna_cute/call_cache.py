"""Eager calls repeat themselves: same shapes, layouts and parameters, new tensors.

A model calls ``gna_cute.attention`` with one signature over and over.  The argument checks and
the backend choice read only that signature (shapes, strides, dtypes, devices, 16-byte alignment,
the neighborhood parameters with their Python types, scale, tiles, backend name), so a call whose
signature matches an earlier call's reuses that call's checked parameters and chosen launch and
only binds its own tensors.  Why: they were ~60 % of the Python time per call (~24 us on a CI
core; the lent H100 host measured 110-129 us per call in all, where torch's SDPA took 70 us).

Only eager calls without gradients or extra KV tokens use it, and only launches a backend can
rebind (``backends.Prepared.run``); an entry holds no tensors.  The cache is process state: it
is tied to the backend chain it was filled under (``backends.BACKENDS``), and ``clear()`` empties
it (tests that patch the backends' internals start from an empty one).
"""

from __future__ import annotations

from typing import Any, Hashable

import torch

from . import backends
from .checks import CheckedArgs

#: At most this many signatures are kept (a model has a handful; a sweep over sizes starts over).
MAX_ENTRIES = 256

_ENTRIES: dict[Hashable, tuple[CheckedArgs, backends.Run, tuple]] = {}
_SCALARS = (int, bool, float, type(None), str)


def _typed(x: Any) -> Hashable:
    """``x`` with its type (and its elements' types): ``stride=1`` and ``stride=True`` differ, as
    they do to the checks (the second is refused)."""
    t = type(x)
    if t in _SCALARS:
        return t, x
    if t is tuple or t is list:
        return t, tuple(map(type, x)), tuple(x)
    raise TypeError(f"no signature for {t.__name__}")


def signature(
    q: Any, k: Any, v: Any, kernel_size: Any, stride: Any, dilation: Any, is_causal: Any, scale: Any,
    backend: Any, q_tile_shape: Any, kv_tile_shape: Any,
) -> Hashable | None:
    """Everything the checks and the backend choice read of a call, or None (no cached path)."""
    if type(q) is not torch.Tensor or type(k) is not torch.Tensor or type(v) is not torch.Tensor:
        return None
    try:
        key = (
            q.shape, k.shape, v.shape, q.stride(), k.stride(), v.stride(), q.dtype, k.dtype, v.dtype,
            q.device, k.device, v.device, (q.data_ptr() | k.data_ptr() | v.data_ptr()) & 15,
            _typed(kernel_size), _typed(stride), _typed(dilation), _typed(is_causal), _typed(scale),
            _typed(backend), _typed(q_tile_shape), _typed(kv_tile_shape),
        )  # fmt: skip
        hash(key)
    except (TypeError, RuntimeError):  # an unhashable argument, a tensor without a data pointer
        return None
    return key


def get(key: Hashable) -> tuple[CheckedArgs, backends.Run] | None:
    """The checked parameters and the launch of an earlier call with signature ``key``."""
    entry = _ENTRIES.get(key)
    if entry is None or entry[2] is not backends.BACKENDS:
        return None
    return entry[0], entry[1]


def put(key: Hashable, checked: CheckedArgs, choice: backends.Choice) -> None:
    """Remember the call's checks and choice, if its launch can serve other calls."""
    launch = choice.launch
    if choice.merge_extra or not isinstance(launch, backends.Prepared) or launch.run is None:
        return
    if len(_ENTRIES) >= MAX_ENTRIES:
        _ENTRIES.clear()
    _ENTRIES[key] = (checked, launch.run, backends.BACKENDS)


def clear() -> None:
    _ENTRIES.clear()
