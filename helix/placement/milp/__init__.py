"""The default placement planner: aggregated boundary-graph MILPs on HiGHS, a stage heuristic, proven
upper bounds and local search, every result checked by the independent max-flow evaluator."""

from helix.placement.milp.plan import milp_plan

__all__ = ["milp_plan"]
