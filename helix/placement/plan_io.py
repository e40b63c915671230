"""The plan file: a versioned JSON record of a placement that `simulate` and `serve` read.

Format ``helix-plan`` version 1::

    {
      "format": "helix-plan", "version": 1,
      "model": {"name": "llama-2-70b", "num_layers": 80},
      "cluster": {"name": "single24", "nodes": ["n0", ...]},
      "method": "milp", "capacity_model": "profile tables (...)", "partial_overlap": false,
      "placement": {"n0": [7, 11], ...},               # node -> [start, end) layer range
      "unused_nodes": ["n5"],
      "max_flow_tokens_per_s": 1289.556,               # evaluated independently of the planner
      "upper_bound_tokens_per_s": 1301.2, "bound_source": "...",
      "nodes": [{"name", "gpu", "start", "end", "capacity_tokens_per_s", "inflow_tokens_per_s"}],
      "flows": [{"src": "coordinator", "dst": "n15", "tokens_per_s": 1289.556}, ...],
      "planner": {...}                                 # method-specific details (time, gap, ...)
    }
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helix.errors import HelixInputError
from helix.flow.graph import DEFAULT_PARTIAL_OVERLAP, chains
from helix.placement.result import PlanResult
from helix.specs.cluster import COORDINATOR, ClusterSpec
from helix.specs.model import ModelSpec
from helix.specs.placement import LayerRange, Placement

PLAN_FORMAT = "helix-plan"
PLAN_VERSION = 1


@dataclass(frozen=True)
class Plan:
    """A plan as read from / written to JSON."""

    placement: Placement
    model_name: str
    num_layers: int
    cluster_name: str
    cluster_nodes: tuple[str, ...]
    method: str
    partial_overlap: bool = DEFAULT_PARTIAL_OVERLAP
    max_flow_tokens_per_s: float | None = None
    upper_bound_tokens_per_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    used = set(plan.placement)
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "model": {"name": plan.model_name, "num_layers": plan.num_layers},
        "cluster": {"name": plan.cluster_name, "nodes": list(plan.cluster_nodes)},
        "method": plan.method,
        "partial_overlap": plan.partial_overlap,
        "placement": {name: [r.start, r.end] for name, r in plan.placement.items()},
        "unused_nodes": [n for n in plan.cluster_nodes if n not in used],
        "max_flow_tokens_per_s": plan.max_flow_tokens_per_s,
        "upper_bound_tokens_per_s": plan.upper_bound_tokens_per_s,
        **plan.extra,
    }


def save_plan(plan: Plan, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(plan_to_dict(plan), indent=2) + "\n")


def _placement_from(raw: Any, where: str) -> Placement:
    if not isinstance(raw, dict):
        raise HelixInputError(
            "must be a mapping of node name to [start, end]", where=where, field="placement"
        )
    ranges = {}
    for name, value in raw.items():
        ok = isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value)
        if not ok or not 0 <= value[0] < value[1]:
            raise HelixInputError(
                f"invalid layer range {value!r}",
                where=where,
                field=f"placement.{name}",
                fix="write [start, end] with 0 <= start < end",
            )
        ranges[str(name)] = LayerRange(value[0], value[1])
    return Placement(ranges)


def plan_from_dict(data: Any, where: str = "plan") -> Plan:
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        raise HelixInputError(
            'not a helix plan (missing "format": "helix-plan")',
            where=where,
            field="format",
            fix="write plans with `helix plan -o plan.json`",
        )
    if data.get("version") != PLAN_VERSION:
        raise HelixInputError(
            f"unsupported plan version {data.get('version')!r}",
            where=where,
            field="version",
            fix=f"re-create the plan with this helix (version {PLAN_VERSION})",
        )
    try:
        model, cluster = data["model"], data["cluster"]
        known = {
            "format",
            "version",
            "model",
            "cluster",
            "method",
            "partial_overlap",
            "placement",
            "unused_nodes",
            "max_flow_tokens_per_s",
            "upper_bound_tokens_per_s",
        }
        return Plan(
            placement=_placement_from(data["placement"], where),
            model_name=str(model["name"]),
            num_layers=int(model["num_layers"]),
            cluster_name=str(cluster["name"]),
            cluster_nodes=tuple(cluster["nodes"]),
            method=str(data.get("method", "unknown")),
            partial_overlap=bool(data.get("partial_overlap", DEFAULT_PARTIAL_OVERLAP)),
            max_flow_tokens_per_s=data.get("max_flow_tokens_per_s"),
            upper_bound_tokens_per_s=data.get("upper_bound_tokens_per_s"),
            extra={k: v for k, v in data.items() if k not in known},
        )
    except (KeyError, TypeError) as exc:
        raise HelixInputError(
            f"missing or malformed field {exc}",
            where=where,
            field=str(exc).strip("'"),
            fix="re-create the plan with `helix plan`",
        ) from None


def load_plan(path: str | Path) -> Plan:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise HelixInputError(
            f"cannot read the plan ({exc.strerror})",
            where=str(path),
            fix="check the path, or create one with `helix plan -o plan.json`",
        ) from None
    except json.JSONDecodeError as exc:
        raise HelixInputError(f"invalid JSON ({exc.msg} at line {exc.lineno})", where=str(path)) from None
    return plan_from_dict(data, where=str(path))


def check_plan_matches(plan: Plan, cluster: ClusterSpec, model: ModelSpec, where: str = "plan") -> None:
    """Raise if the plan was made for another cluster or model, or leaves layers uncovered."""
    if plan.num_layers != model.num_layers:
        raise HelixInputError(
            f"the plan is for {plan.model_name} ({plan.num_layers} layers), not {model.name} "
            f"({model.num_layers} layers)",
            where=where,
            field="model",
            fix="plan again for this model with `helix plan`",
        )
    unknown = sorted(set(plan.placement) - set(cluster.node_names))
    if unknown:
        raise HelixInputError(
            f"nodes {unknown[:5]} are not in cluster {cluster.name!r}",
            where=where,
            field="placement",
            fix="plan again for this cluster with `helix plan`",
        )
    for name, r in plan.placement.items():
        if r.end > model.num_layers:
            raise HelixInputError(
                f"range {r} ends past layer {model.num_layers}",
                where=where,
                field=f"placement.{name}",
                fix="plan again for this model",
            )
    uncovered = plan.placement.uncovered_layers(model.num_layers)
    if uncovered:
        raise HelixInputError(
            f"layers {uncovered[:10]} are held by no node",
            where=where,
            field="placement",
            fix="every layer must be held by at least one node",
        )
    if not _has_pipeline(plan, cluster, model.num_layers, plan.partial_overlap):
        needs = not plan.partial_overlap and _has_pipeline(plan, cluster, model.num_layers, True)
        raise HelixInputError(
            "no complete pipeline: no chain of linked nodes runs layers 0.."
            f"{model.num_layers - 1} with {'partial-overlap' if plan.partial_overlap else 'strict'} chaining",
            where=where,
            field="partial_overlap" if needs else "placement",
            fix='its ranges only chain with partial overlap: set "partial_overlap": true or plan with '
            "`helix plan --partial-overlap`"
            if needs
            else "plan again for this cluster with `helix plan`",
        )


def _has_pipeline(plan: Plan, cluster: ClusterSpec, num_layers: int, partial_overlap: bool) -> bool:
    """Is there a route coordinator → nodes → coordinator under the chaining rule (`chains`)?"""
    ranges = dict(plan.placement.items())
    frontier = [n for n, r in ranges.items() if r.start == 0 and cluster.link(COORDINATOR, n) is not None]
    seen = set(frontier)
    while frontier:
        name = frontier.pop()
        if ranges[name].end == num_layers and cluster.link(name, COORDINATOR) is not None:
            return True
        for other, r in ranges.items():
            if (
                other not in seen
                and cluster.link(name, other) is not None
                and chains(ranges[name], r, partial_overlap)
            ):
                seen.add(other)
                frontier.append(other)
    return False


def plan_from_result(
    result: PlanResult,
    cluster: ClusterSpec,
    model: ModelSpec,
    *,
    capacity_description: str,
    partial_overlap: bool,
    sources: dict[str, Any] | None = None,
) -> Plan:
    """The plan record of a planner result: placement, evaluated flow, per-node and per-link detail."""
    flow = result.flow
    nodes = []
    for node in cluster.nodes:
        r = result.placement.get(node.name)
        nodes.append(
            {
                "name": node.name,
                "gpu": node.gpu.name,
                "region": node.region,
                "start": r.start if r else None,
                "end": r.end if r else None,
                "inflow_tokens_per_s": round(flow.node_inflow.get(node.name, 0.0), 6),
            }
        )
    flows = [{"src": s, "dst": d, "tokens_per_s": round(f, 6)} for (s, d), f in flow.link_flows().items()]
    extra = {
        "capacity_model": capacity_description,
        "bound_source": result.bound_source,
        "bottleneck": flow.describe_bottleneck(),
        "nodes": nodes,
        "flows": flows,
        "planner": {
            "elapsed_s": round(result.elapsed_s, 3),
            "time_to_best_s": round(result.time_to_best_s, 3),
            "gap": result.gap,
            "warnings": list(result.warnings),
            **result.details,
        },
        "sources": sources or {},
    }
    return Plan(
        placement=result.placement,
        model_name=model.name,
        num_layers=model.num_layers,
        cluster_name=cluster.name,
        cluster_nodes=cluster.node_names,
        method=result.method,
        partial_overlap=partial_overlap,
        max_flow_tokens_per_s=round(flow.value_tokens_per_s, 6),
        upper_bound_tokens_per_s=result.upper_bound_tokens_per_s,
        extra=extra,
    )
