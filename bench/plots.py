"""Plots of a :class:`results.RunRecord` (matplotlib; optional, ImportError when missing).

* ``<stem>-stride.png``: speedup vs cuDNN against stride, per problem family (same sizes and
  window), each provider next to the simulator's tile-wise bound: how close we get to what the
  tiling allows.
* ``<stem>-sparsity.png``: speedup vs cuDNN against the FLOP-wise sparsity (dense / attended
  pairs) for every problem, with the ideal line y = x.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_SKIP = ("cudnn-dense", "sim-flop-bound", "sim-predicted")


def _color(provider: str) -> str:
    """One colour per provider in every panel and plot (matplotlib's cycle restarts per axes);
    black for the simulator's tile bound."""
    from .providers import all_providers

    if provider == "sim-tile-bound":
        return "k"
    names = [pr.name for pr in all_providers()]
    return f"C{names.index(provider) % 10}" if provider in names else "C9"


def _family(p: dict) -> tuple:
    return (tuple(p["spatial_shape"]), tuple(p["kernel_size"]), tuple(p["dilation"]),
            tuple(p["is_causal"]), p["heads"], p["head_dim"], p["dtype"])


def _speedups(record) -> dict[str, dict[str, float]]:
    """problem name -> provider -> speedup vs cuDNN."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for r in record.rows:
        if r.get("status") == "ok" and r.get("speedup_cudnn") and r["provider"] not in _SKIP:
            out[r["problem"]][r["provider"]] = r["speedup_cudnn"]
    return out


def stride_plot(record, path: Path) -> Path | None:
    speed = _speedups(record)
    families: dict[tuple, list[dict]] = defaultdict(list)
    for p in record.problems:
        if p["name"] in speed and not _is_dense(p):
            families[_family(p)].append(p)
    families = {k: v for k, v in families.items() if len({tuple(p["stride"]) for p in v}) > 1}
    if not families:
        return None
    fig, axes = plt.subplots(1, len(families), figsize=(5 * len(families), 4), squeeze=False)
    for ax, (fam, probs) in zip(axes[0], families.items()):
        probs = sorted(probs, key=lambda p: p["stride"][0])
        xs = [p["stride"][0] for p in probs]
        providers = sorted({n for p in probs for n in speed[p["name"]]})
        for prov in providers:
            pts = [(x, speed[p["name"]].get(prov)) for x, p in zip(xs, probs)]
            pts = [(x, y) for x, y in pts if y is not None]
            style = "--" if prov == "sim-tile-bound" else "o-"
            ax.plot([x for x, _ in pts], [y for _, y in pts], style, color=_color(prov), label=prov)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, labels=["x".join(map(str, p["stride"])) for p in probs], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel("stride")
        ax.set_ylabel("speedup vs cuDNN")
        ax.set_title(f"{'x'.join(map(str, fam[0]))} w={'x'.join(map(str, fam[1]))}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sparsity_plot(record, path: Path) -> Path | None:
    speed = _speedups(record)
    bounds = {p["name"]: p["flop_bound"] for p in record.problems}
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for name, provs in speed.items():
        for prov, s in provs.items():
            series[prov].append((bounds[name], s))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5))
    top = max(x for pts in series.values() for x, _ in pts)
    ax.plot([1, top], [1, top], "k:", label="ideal (FLOP-wise)")
    for prov, pts in sorted(series.items()):
        pts.sort()
        ax.plot([x for x, _ in pts], [y for _, y in pts], "o", color=_color(prov), label=prov, alpha=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sparsity (dense / attended pairs)")
    ax.set_ylabel("speedup vs cuDNN")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _is_dense(p: dict) -> bool:
    return p["flop_bound"] == 1.0


def save_plots(record, out_dir: Path, stem: str) -> list[Path]:
    made = [stride_plot(record, out_dir / f"{stem}-stride.png"),
            sparsity_plot(record, out_dir / f"{stem}-sparsity.png")]
    return [p for p in made if p is not None]
