"""Request scheduling: per-request pipelines over a placed cluster (pure logic, no simulator or Ray).

See `helix.scheduling.base` for the lifecycle API and docs/scheduler_api.md for how a runtime drives it.
"""

from helix.scheduling.admission import AdmissionQueue, should_feed
from helix.scheduling.base import SCHEDULERS, Route, Scheduler, create_scheduler, register_scheduler
from helix.scheduling.baselines import RandomScheduler, ShortestQueueScheduler, SwarmScheduler
from helix.scheduling.iwrr import IWRR
from helix.scheduling.kv import KVExpectation, KVParameters
from helix.scheduling.maxflow import MaxFlowScheduler
from helix.scheduling.pipeline import Hop, Pipeline, next_hop_layers
from helix.scheduling.topology import NextHop, NodeLimits, Topology, node_limits

__all__ = [
    "IWRR",
    "SCHEDULERS",
    "AdmissionQueue",
    "Hop",
    "KVExpectation",
    "KVParameters",
    "MaxFlowScheduler",
    "NextHop",
    "NodeLimits",
    "Pipeline",
    "RandomScheduler",
    "Route",
    "Scheduler",
    "ShortestQueueScheduler",
    "SwarmScheduler",
    "Topology",
    "create_scheduler",
    "next_hop_layers",
    "node_limits",
    "register_scheduler",
    "should_feed",
]
