import pytest

from helix.errors import HelixInputError
from helix.flow import evaluate_placement
from helix.placement.planner import plan
from helix.placement.result import PlannerOptions


@pytest.mark.parametrize("method", ["petals", "swarm", "homogeneous", "separate"])
def test_reported_flow_is_the_evaluators(helix_setup, method):
    cluster, model, capacity = helix_setup("single24")
    result = plan(cluster, model, PlannerOptions(method=method), capacity)
    again = evaluate_placement(cluster, model, result.placement, capacity)
    assert result.flow_tokens_per_s == pytest.approx(again.value_tokens_per_s, abs=1e-9)
    assert result.upper_bound_tokens_per_s == pytest.approx(2803.861, abs=1e-3)


def test_unknown_method(helix_setup):
    cluster, model, capacity = helix_setup("cluster10")
    with pytest.raises(HelixInputError, match="unknown placement method"):
        plan(cluster, model, PlannerOptions(method="magic"), capacity)


def test_milp_is_registered_and_an_import_error_is_not_hidden(monkeypatch):
    import sys

    from helix.placement import planner

    assert "milp" in planner.available_methods()
    assert PlannerOptions().method in planner.available_methods()
    monkeypatch.delitem(planner.METHODS, "milp")
    monkeypatch.setitem(sys.modules, "helix.placement.milp", None)  # the import now fails
    with pytest.raises(ImportError):
        planner.available_methods()
