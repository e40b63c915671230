"""Placement: which layers each node holds. `plan()` is the entry point; baselines and the MILP planner
are methods behind it."""

from helix.placement.planner import available_methods, plan
from helix.placement.result import PlannerOptions, PlanResult

__all__ = ["PlanResult", "PlannerOptions", "available_methods", "plan"]
