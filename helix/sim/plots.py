"""PNG plots of a simulation (matplotlib, Agg backend): throughput over time, latency CDFs, per-node
utilisation and KV occupancy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


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
    ax.set_xlabel("time (s)")
    ax.set_ylabel("tokens/s")
    ax.legend()
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
    ax.set_ylabel("CDF")
    ax.legend()
    paths.append(_save(fig, outdir / "latency_cdf.png"))

    timeline = result["timeline"]
    names = timeline["nodes"]
    times = np.asarray(timeline["t_s"])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    if len(times):
        busy = np.asarray(timeline["busy"]).reshape(len(times), -1)
        kv = np.asarray(timeline["kv"]).reshape(len(times), -1)
        extent = (times[0], times[-1], -0.5, len(names) - 0.5)
        ax1.imshow(
            busy.T, aspect="auto", origin="lower", extent=extent, vmin=0, vmax=1, interpolation="nearest"
        )
        image = ax2.imshow(
            kv.T, aspect="auto", origin="lower", extent=extent, vmin=0, vmax=1, interpolation="nearest"
        )
        fig.colorbar(image, ax=[ax1, ax2], shrink=0.8)
    for ax, title in ((ax1, "utilisation"), (ax2, "KV occupancy")):
        ax.set_yticks(range(len(names)), names, fontsize=6)
        ax.set_title(title, fontsize=9)
    ax2.set_xlabel("time (s)")
    paths.append(_save(fig, outdir / "nodes.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
