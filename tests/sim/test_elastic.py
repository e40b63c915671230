"""The simulator's elastic membership: re-plan, make-before-break loading and the switch."""

import numpy as np
import pytest

from helix.placement import PlannerOptions, plan
from helix.scheduling.recovery import MembershipEvent
from helix.scheduling.replan import ReplanSettings
from helix.sim.config import SimConfig
from helix.sim.elastic import ElasticSim
from helix.sim.run import simulate
from helix.sim.workload import Lengths
from helix.specs.membership import restrict

LENGTHS = Lengths(np.array([100]), np.array([50]), "test")
PLAN_S = 1.0


def _run(helix_setup, events, cluster=None, placement=None, rate=0.5, duration=150.0):
    full, model, capacity = helix_setup("cluster10")
    cluster = cluster or full
    placement = placement or plan(cluster, model, PlannerOptions(time_limit_s=3), capacity).placement
    config = SimConfig(mode="online", warmup_s=0.0, duration_s=duration, model_loading=False)
    arrivals = np.arange(0.0, duration - 40.0, 1.0 / rate)
    elastic = ElasticSim(full, ReplanSettings(time_limit_s=2.0, load_bytes_per_s=2e9), plan_time_s=PLAN_S)
    result = simulate(
        cluster,
        model,
        placement,
        capacity,
        LENGTHS,
        config,
        arrival_times_s=arrivals,
        membership_events=events,
        elastic=elastic,
    )
    return result, placement, model, len(arrivals)


def _mean_rate(result, lo, hi):
    th = result["elastic"]["throughput"]
    t, v = np.asarray(th["t_s"]), np.asarray(th["tokens_per_s"])
    return float(v[(t >= lo) & (t < hi)].mean())


def test_drain_under_load_moves_requests_and_fails_none(helix_setup):
    cluster, _, _ = helix_setup("cluster10")
    node = cluster.node_names[3]
    result, placement, model, arrived = _run(helix_setup, [MembershipEvent(30.0, "drain", node)])
    (rp,) = result["elastic"]["replans"]
    counters = result["summary"]["counters"]
    assert node in placement and node not in rp["placement"]
    assert counters.get("requests_unservable", 0) == 0 and counters.get("requests_rejected", 0) == 0
    assert counters["requests_completed"] == arrived
    assert rp["moved_layers"] > 0 and rp["flow_after_tokens_per_s"] > 0
    # modelled time to the new plan: planning + the slowest node's load (layers × bytes / read speed)
    assert rp["time_to_new_plan_s"] == pytest.approx(PLAN_S + rp["load_s"], abs=1e-6)
    assert rp["load_s"] <= rp["moved_layers"] * model.layer_weight_bytes / 2e9 + 1e-9


def test_lost_node_replan_restores_throughput(helix_setup):
    cluster, _, _ = helix_setup("cluster10")
    victim = "n0"
    result, _, _, arrived = _run(helix_setup, [MembershipEvent(30.0, "fail", victim)])
    (rp,) = result["elastic"]["replans"]
    assert rp["flow_before_tokens_per_s"] == 0.0  # a single pipeline set: nothing serves until the re-plan
    counters = result["summary"]["counters"]
    # no pipeline is left until the switch: the requests re-routed and those arriving meanwhile wait for
    # the new plan instead of being dropped as unservable
    assert counters["requests_rerouted"] > 0 and counters.get("requests_unservable", 0) == 0
    assert counters["requests_completed"] == arrived
    assert victim not in rp["placement"] and rp["flow_after_tokens_per_s"] > 0
    before = _mean_rate(result, 10, 30)
    after = _mean_rate(result, rp["switch_s"] + 10, rp["switch_s"] + 40)
    assert after >= 0.8 * before


def test_join_plans_the_new_node_in(helix_setup):
    full, model, capacity = helix_setup("cluster10")
    spare = full.node_names[-1]
    small = restrict(full, [n for n in full.node_names if n != spare])
    result, _, _, arrived = _run(helix_setup, [MembershipEvent(20.0, "join", spare)], cluster=small)
    (rp,) = result["elastic"]["replans"]
    assert spare in rp["placement"]
    assert rp["flow_after_tokens_per_s"] > rp["flow_before_tokens_per_s"]
    assert result["summary"]["nodes"][spare]["utilization"] > 0
    assert result["summary"]["counters"]["requests_completed"] == arrived


def test_a_later_event_supersedes_a_pending_switch(helix_setup):
    cluster, _, _ = helix_setup("cluster10")
    a, b = cluster.node_names[3], cluster.node_names[4]
    events = [MembershipEvent(30.0, "drain", a), MembershipEvent(30.5, "drain", b)]
    result, _, _, arrived = _run(helix_setup, events)
    (rp,) = result["elastic"]["replans"]
    assert rp["trigger"]["node"] == b and a not in rp["placement"] and b not in rp["placement"]
    assert result["summary"]["counters"]["requests_completed"] == arrived
