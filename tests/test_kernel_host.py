"""CPU: the kernel host layer's refusal reasons, its configs and the compile cache's bookkeeping.

No GPU and no compile: refusals are checked through ``problem_reason`` (the device-independent
part of ``can_run``) on CPU tensors; the cache is driven by a stub builder.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from gna_cute import backends
from gna_cute.backends import AttentionArgs
from gna_cute.kernels import compile_cache, interface
from gna_cute.kernels.config import FwdConfig
from gna_cute.params import GNAParams


def _args(
    spatial=(16, 12),
    heads=4,
    kv_heads=2,
    dim=64,
    dim_v=None,
    dtype=torch.float16,
    kernel_size=(5, 3),
    stride=1,
    dilation=1,
    is_causal=False,
    **extra,
) -> AttentionArgs:
    q = torch.randn(2, *spatial, heads, dim).to(dtype)
    k = torch.randn(2, *spatial, kv_heads, dim).to(dtype)
    v = torch.randn(2, *spatial, kv_heads, dim_v or dim).to(dtype)
    params = GNAParams.make(spatial, kernel_size, stride, dilation, is_causal)
    return AttentionArgs(q=q, k=k, v=v, params=params, scale=dim**-0.5, **extra)


def test_supported_problem_has_no_reason() -> None:
    assert interface.problem_reason(_args(), 90) is None


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(dtype=torch.float32), ["float32"]),
        (dict(dim=96), ["head dim", "96"]),
        (dict(dim_v=32), ["value head dim", "32"]),
        (dict(q_tile_shape=(16, 8)), ["kv_tile_shape=None"]),
        (dict(q_tile_shape=(3, 5), kv_tile_shape=(16, 8)), ["(3, 5)", "supported"]),
    ],
)
def test_refusal_names_the_constraint(change: dict, words: list[str]) -> None:
    reason = interface.problem_reason(_args(**change), 90)
    assert reason is not None
    for w in words:
        assert w in reason, reason


def test_refuses_additional_kv() -> None:
    base = _args()
    extra = torch.randn(2, 3, 2, 64).half()
    reason = interface.problem_reason(dataclasses.replace(base, additional_keys=extra, additional_values=extra), 90)
    assert reason is not None and "additional" in reason


def test_refuses_non_contiguous_last_dim() -> None:
    base = _args()
    q = base.q.transpose(-1, -2).contiguous().transpose(-1, -2)  # same shape, last-dim stride != 1
    reason = interface.problem_reason(dataclasses.replace(base, q=q), 90)
    assert reason is not None and "contiguous last dim" in reason


def test_refuses_misaligned_stride() -> None:
    base = _args(dim=64)
    big = torch.randn(2, 16, 12, 4, 68).half()  # head stride 136 bytes
    reason = interface.problem_reason(dataclasses.replace(base, q=big[..., :64]), 90)
    assert reason is not None and "stride" in reason and "16 bytes" in reason


def test_cpu_tensors_and_gpu_less_machine_are_refused() -> None:
    reason = interface.can_run_sm90(_args())
    assert reason is not None and ("CUDA" in reason or "SM 9" in reason)
    if not torch.cuda.is_available():
        assert "GPU" in interface.available_sm90()
        assert "GPU" in interface.available_sm100()


def test_sm100_says_it_never_ran_on_blackwell() -> None:
    if torch.cuda.is_available() and torch.cuda.get_device_capability(0)[0] == 10:
        pytest.skip("on a Blackwell GPU sm100 is available")
    assert "not yet run on Blackwell hardware" in interface.available_sm100()


@pytest.mark.parametrize("arch", [90, 100])
def test_both_archs_accept_a_plain_problem_and_refuse_fp32(arch: int) -> None:
    assert interface.problem_reason(_args(), arch) is None
    reason = interface.problem_reason(_args(dtype=torch.float32), arch)
    assert reason is not None and reason.startswith(f"sm{arch}") and "float32" in reason


def test_config_carries_the_static_problem() -> None:
    tiles = dict(q_tile_shape=(8, 16), kv_tile_shape=(8, 8))  # explicit: the default depends on the size
    args = _args(kernel_size=(5, 3), stride=(2, 1), dilation=(2, 1), is_causal=(False, True), **tiles)
    cfg = interface.make_config(args, 90)
    assert cfg == FwdConfig(
        arch=90,
        dtype="float16",
        head_dim=64,
        head_dim_v=64,
        q_tile_shape=(8, 16),
        kv_tile_shape=(8, 8),
        kernel_size=(5, 3),
        stride=(2, 1),
        dilation=(2, 1),
        is_causal=(False, True),
        mainloop="rotated",  # tile_choice.choose_mainloop: every sm90 tiling
        tile_order=(1, 0),  # tile_choice.choose_tile_order: dim 0's neighbours share more K/V
    )
    # problem sizes are run-time values: another batch / size / head count gives the same key
    assert interface.make_config(_args(spatial=(32, 20), heads=2, kv_heads=1, kernel_size=(5, 3),
                                       stride=(2, 1), dilation=(2, 1), is_causal=(False, True), **tiles),
                                 90) == cfg


def test_counts_shape_covers_the_longest_group() -> None:
    params = GNAParams.make((17, 10), (3, 2), dilation=(2, 1))
    # group 0 of dim 0 has 9 tokens -> 2 tiles of 8; dim 1: 10 tokens -> 3 tiles of 4
    assert interface.counts_shape(params, (8, 4)) == (2, 2, 1, 2, 3)


class _Stub:
    """Stands in for a compiled kernel; export writes a file the loader cannot link."""

    def export_to_c(self, directory: str, name: str, prefix: str) -> None:
        with open(f"{directory}/{name}.o", "wb") as f:
            f.write(b"not an object file")


def test_memory_cache_compiles_once_per_key(monkeypatch) -> None:
    monkeypatch.setenv("GNA_CUTE_DISK_CACHE", "0")
    built = []
    cache = compile_cache.KernelCache("stub", lambda key: built.append(key) or _Stub())
    a = cache.get(("a", 1))
    assert cache.get(("a", 1)) is a
    cache.get(("b", 1))
    assert built == [("a", 1), ("b", 1)]
    assert (cache.stats.compiles, cache.stats.memory_hits, cache.stats.disk_loads) == (2, 1, 0)


def test_unloadable_disk_entry_is_a_miss(monkeypatch, tmp_path) -> None:
    pytest.importorskip("cutlass")
    monkeypatch.setenv("GNA_CUTE_DISK_CACHE", "1")
    first = compile_cache.KernelCache("stub", lambda key: _Stub(), root=tmp_path)
    first.get("k")
    entries = sorted(p.suffix for p in first.directory().iterdir())
    assert entries == [".key", ".o"]
    second = compile_cache.KernelCache("stub", lambda key: _Stub(), root=tmp_path)
    second.get("k")  # the garbage .o does not load: compiled again, no exception
    assert (second.stats.compiles, second.stats.disk_loads) == (1, 0)


def test_key_digest_is_stable_and_distinct() -> None:
    cfg = interface.make_config(_args(), 90)
    assert compile_cache.key_digest(cfg) == compile_cache.key_digest(dataclasses.replace(cfg))
    assert compile_cache.key_digest(cfg) != compile_cache.key_digest(dataclasses.replace(cfg, count_tiles=True))


@pytest.fixture
def fake_gpus(monkeypatch):
    """cuda:0 an SM 9.0 GPU, cuda:1 an SM 8.0 one (current: cuda:1); counts capability queries."""
    caps = {0: (9, 0), 1: (8, 0)}
    asked = []

    def capability(index):
        asked.append(index)
        return caps[index]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"fake GPU {index}")
    monkeypatch.setattr(interface, "_kernel_class", lambda arch: object)
    interface._device_index_reason.cache_clear()
    yield asked
    interface._device_index_reason.cache_clear()  # no fake answers left for later tests


def test_device_check_is_memoized_per_device_index(fake_gpus) -> None:
    for _ in range(3):
        assert interface._device_reason(90, torch.device("cuda", 0)) is None
        reason = interface._device_reason(90, torch.device("cuda", 1))
        assert reason == "sm90 needs an SM 9.x GPU; cuda:1 (fake GPU 1) is SM 8.0"
    assert sorted(fake_gpus) == [0, 1]  # asked once per device, not per call
    assert interface.available_sm90() == reason  # no device: the current one, cuda:1
    assert interface._device_reason(100, torch.device("cuda", 0)).startswith("sm100 needs an SM 10.x GPU; cuda:0")


def test_a_call_is_checked_once(monkeypatch) -> None:
    """Dispatch checks the problem (and picks its tiles) once; the launch reuses that plan."""
    calls = {"problem_plan": 0, "_tile_shapes": 0, "layout_problem": 0}

    def counted(module, name):
        real = getattr(module, name)

        def wrapper(*a, **kw):
            calls[name] += 1
            return real(*a, **kw)

        monkeypatch.setattr(module, name, wrapper)

    counted(interface, "problem_plan")
    counted(interface, "_tile_shapes")
    counted(interface.cute_tensors, "layout_problem")
    launched = []
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # CPU tensors pass as CUDA ones
    monkeypatch.setattr(interface, "_device_reason", lambda arch, device: None)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(interface.cute_tensors, "use_tvm_ffi", lambda: True)
    monkeypatch.setattr(interface, "compiled_kernel", lambda cfg: lambda *a: launched.append(cfg))
    out, lse = backends.run(_args(), "sm90")
    assert calls == {"problem_plan": 1, "_tile_shapes": 1, "layout_problem": 3}  # q, k, v
    assert len(launched) == 1 and out.shape == (2, 16, 12, 4, 64) and lse.shape == (2, 16, 12, 4)


def test_unused_counts_tensor_is_shared_per_device_and_rank() -> None:
    cpu = torch.device("cpu")
    two = interface._unused_counts(cpu, 2)
    assert two is interface._unused_counts(cpu, 2)
    assert two.shape == (1,) * 5 and two.dtype == torch.int32  # (2, *dilation, *tiles) of rank 2
    assert interface._unused_counts(cpu, 3).shape == (1,) * 7


def test_tensors_are_detached_for_the_kernel_only_when_they_require_grad() -> None:
    plain, leaf = torch.zeros(2), torch.zeros(2, requires_grad=True)
    assert interface._no_grad(plain) is plain
    detached = interface._no_grad(leaf)
    assert not detached.requires_grad and detached.data_ptr() == leaf.data_ptr()
