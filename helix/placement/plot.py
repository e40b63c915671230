"""A picture of a placement: one bar per node over the layers it holds, coloured by GPU type, labelled
with the flow through the node."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from helix.flow.maxflow import FlowResult  # noqa: E402
from helix.specs.cluster import ClusterSpec, natural_sort_key  # noqa: E402
from helix.specs.model import ModelSpec  # noqa: E402
from helix.specs.placement import Placement  # noqa: E402


def plot_placement(
    cluster: ClusterSpec,
    model: ModelSpec,
    placement: Placement,
    flow: FlowResult,
    path: str | Path,
    title: str = "",
) -> Path:
    """Write a PNG of `placement` to `path` and return the path."""
    names = sorted(cluster.node_names, key=natural_sort_key)
    types = sorted({n.gpu.name for n in cluster.nodes})
    cmap = plt.get_cmap("tab10")
    colour = {t: cmap(i % 10) for i, t in enumerate(types)}
    height = max(3.0, 0.28 * len(names) + 1.5)
    fig, ax = plt.subplots(figsize=(12, height))
    for row, name in enumerate(names):
        node = cluster.node(name)
        r = placement.get(name)
        if r is None:
            ax.text(0.5, row, "unused", va="center", fontsize=7, color="grey")
            continue
        inflow = flow.node_inflow.get(name, 0.0)
        alpha = 1.0 if inflow > 1e-6 else 0.35
        ax.barh(
            row,
            r.num_layers,
            left=r.start,
            color=colour[node.gpu.name],
            alpha=alpha,
            edgecolor="black",
            linewidth=0.4,
        )
        ax.text(r.end + 0.5, row, f"{inflow:.0f} tok/s", va="center", fontsize=7)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels([f"{n} ({cluster.node(n).gpu.name})" for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, model.num_layers * 1.15)
    ax.set_xlabel(f"layer of {model.name} (0..{model.num_layers})")
    ax.axvline(model.num_layers, color="grey", linewidth=0.5)
    ax.legend(
        handles=[Patch(color=colour[t], label=t) for t in types],
        title="GPU type",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        title_fontsize=8,
        frameon=False,
    )
    ax.set_ylabel("node (GPU type)")
    ax.set_title(
        (title or f"{cluster.name} / {model.name}: max flow {flow.value_tokens_per_s:.1f} tokens/s")
        + "\nbars: layers each node holds (faded: no flow); labels: tokens/s through the node",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
