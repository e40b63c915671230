import json

import pytest

from helix.errors import HelixInputError
from helix.placement.plan_io import check_plan_matches, load_plan, plan_from_result, save_plan
from helix.placement.planner import plan
from helix.placement.result import PlannerOptions
from helix.specs.loading import load_cluster
from helix.specs.model import builtin_model


@pytest.fixture
def planned():
    cluster, model = load_cluster("geo-mixed"), builtin_model("llama-3-70b")
    result = plan(cluster, model, PlannerOptions(method="swarm"))
    return cluster, model, result


def test_round_trip(tmp_path, planned):
    cluster, model, result = planned
    record = plan_from_result(result, cluster, model, capacity_description="roofline", partial_overlap=False)
    save_plan(record, tmp_path / "p.json")
    loaded = load_plan(tmp_path / "p.json")
    assert loaded.placement == result.placement
    assert loaded.max_flow_tokens_per_s == pytest.approx(result.flow_tokens_per_s, abs=1e-5)
    check_plan_matches(loaded, cluster, model)
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["format"] == "helix-plan" and data["version"] == 1 and len(data["nodes"]) == 14


def test_plan_for_other_model_is_rejected(tmp_path, planned):
    cluster, model, result = planned
    record = plan_from_result(result, cluster, model, capacity_description="", partial_overlap=False)
    with pytest.raises(HelixInputError, match="plan again"):
        check_plan_matches(record, cluster, builtin_model("llama-3-8b"))


def test_uncovered_layer_is_rejected(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(
        json.dumps(
            {
                "format": "helix-plan",
                "version": 1,
                "model": {"name": "llama-3-8b", "num_layers": 32},
                "cluster": {"name": "geo-mixed", "nodes": ["h100-0"]},
                "method": "x",
                "placement": {"h100-0": [0, 30]},
            }
        )
    )
    with pytest.raises(HelixInputError, match=r"layers \[30, 31\]"):
        check_plan_matches(load_plan(path), load_cluster("geo-mixed"), builtin_model("llama-3-8b"))


@pytest.mark.parametrize(
    "content, match",
    [
        ("{", "invalid JSON"),
        ('{"format": "other"}', "not a helix plan"),
        ('{"format": "helix-plan", "version": 9}', "unsupported plan version"),
        (
            '{"format": "helix-plan", "version": 1, "model": {"name": "m", "num_layers": 2},'
            ' "cluster": {"name": "c", "nodes": []}, "placement": {"a": [3, 1]}}',
            "invalid layer range",
        ),
    ],
)
def test_malformed_plans(tmp_path, content, match):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(HelixInputError, match=match):
        load_plan(path)
