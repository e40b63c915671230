"""PNG plots of a simulation (matplotlib, Agg backend): throughput over time, latency CDFs, per-node
utilisation and KV occupancy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from helix.specs.cluster import natural_sort_key


def write_plots(result: dict[str, Any], outdir: str | Path, bin_s: float = 10.0) -> list[Path]:
    """Write throughput.png, latency_cdf.png and nodes.png into `outdir`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rec = result["_recorder"]
    lo, hi = result["summary"]["window_s"]
    paths = []

    fig, ax = plt.subplots(figsize=(7, 3.5))
    decode = np.frombuffer(rec.decode_return_s, dtype=float)
    edges = np.arange(0.0, hi + bin_s, bin_s)
    counts, _ = np.histogram(decode, bins=edges)
    ax.plot(edges[:-1] + bin_s / 2, counts / bin_s, label="decode tokens/s")
    ax.axvspan(lo, hi, color="0.9", label="measured window")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("tokens/s")
    summary = result["summary"]
    ax.set_title(
        f"decode throughput per {bin_s:g} s (window mean {summary['decode_tokens_per_s']:.1f} tokens/s)",
        fontsize=9,
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    paths.append(_save(fig, outdir / "throughput.png"))

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, returns, values in (
        ("prompt latency (TTFT)", rec.prompt_return_s, rec.ttft_s),
        ("decode latency (TPOT)", rec.decode_return_s, rec.decode_latency_s),
    ):
        t, v = np.frombuffer(returns, dtype=float), np.frombuffer(values, dtype=float)
        v = np.sort(v[(t >= lo) & (t <= hi)])
        if len(v):
            ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=name)
    ax.set_xlabel("seconds")
    ax.set_ylabel("fraction of iterations (CDF)")
    ax.set_title("latency of iterations returning in the measured window", fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    paths.append(_save(fig, outdir / "latency_cdf.png"))

    timeline = result["timeline"]
    order = sorted(range(len(timeline["nodes"])), key=lambda i: natural_sort_key(timeline["nodes"][i]))
    names = [timeline["nodes"][i] for i in order]
    times = np.asarray(timeline["t_s"])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    if len(times):
        busy = np.asarray(timeline["busy"]).reshape(len(times), -1)[:, order]
        kv = np.asarray(timeline["kv"]).reshape(len(times), -1)[:, order]
        extent = (times[0], times[-1], len(names) - 0.5, -0.5)  # first node on top
        ax1.imshow(
            busy.T, aspect="auto", origin="upper", extent=extent, vmin=0, vmax=1, interpolation="nearest"
        )
        image = ax2.imshow(
            kv.T, aspect="auto", origin="upper", extent=extent, vmin=0, vmax=1, interpolation="nearest"
        )
        fig.colorbar(image, ax=[ax1, ax2], shrink=0.8, label="fraction (0..1)")
    for ax, title in ((ax1, "utilisation: busy fraction per node"), (ax2, "KV cache occupancy per node")):
        ax.set_yticks(range(len(names)), names, fontsize=6)
        ax.set_ylabel("node")
        ax.set_title(title, fontsize=9)
    ax2.set_xlabel("time (s)")
    paths.append(_save(fig, outdir / "nodes.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
