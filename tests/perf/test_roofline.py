import pytest

from helix.perf.roofline import RooflineCapacityModel
from helix.specs.model import builtin_model


def test_max_layers_match_helix_rule_for_70b():
    model = builtin_model("llama-2-70b")
    roof = RooflineCapacityModel(model, {"A100-40GB": 1, "L4": 1, "T4": 1, "L4x2": 1, "T4x4": 1})
    # Helix's hand-set limits: A100 12, L4 7, T4 4, L4x2 14, T4x4 18.
    assert [roof.max_layers(g) for g in ("A100-40GB", "L4", "T4", "L4x2", "T4x4")] == [12, 7, 4, 14, 18]


def test_throughput_decreases_with_layers_and_faster_gpu_is_faster():
    model = builtin_model("llama-3-70b")
    roof = RooflineCapacityModel(model, {"H100-80GB": 4, "L4": 8})
    table = roof.throughput_table("H100-80GB")
    assert all(a > b for a, b in zip(table, table[1:], strict=False))
    assert roof.throughput_tokens_per_s("H100-80GB", 4) > 3 * roof.throughput_tokens_per_s("L4", 4)


def test_decode_time_is_memory_bound_at_small_batch():
    model = builtin_model("llama-3-8b")
    roof = RooflineCapacityModel(model, {"H100-80GB": 1})
    t1 = roof.decode_layer_time_s("H100-80GB", 1)
    weights_time = model.layer_weight_bytes / (3350e9 * roof._params.memory_efficiency)
    assert t1 == pytest.approx(
        weights_time
        + 1000 * model.kv_bytes_per_token_per_layer / (3350e9 * roof._params.memory_efficiency)
        + roof._params.layer_overhead_s
    )


def test_kv_capacity_shrinks_with_layers():
    roof = RooflineCapacityModel(builtin_model("llama-3-8b"), {"L4": 1})
    assert roof.kv_capacity_tokens("L4", 4) > roof.kv_capacity_tokens("L4", 8) > 0
    assert roof.kv_capacity_tokens("L4", 4) % 16 == 0


def test_tiny_memory_gpu_type_has_finite_throughput():
    from helix.specs.gpu import GPUCatalog, GPUSpec, default_catalog

    tiny = GPUSpec("Tiny", vram_bytes=8e9, peak_tflops=10, hbm_gbytes_per_s=100, nic_gbps=10)
    catalog = default_catalog().with_types([tiny])
    roof = RooflineCapacityModel(builtin_model("llama-3-8b"), {"Tiny": 2}, catalog=catalog)
    assert isinstance(catalog, GPUCatalog)
    assert all(0 < tp < float("inf") for tp in roof.throughput_table("Tiny"))


def test_capacity_factory_knows_the_clusters_own_gpu_types():
    from helix.perf.factory import capacity_model_for
    from helix.specs.cluster_yaml import cluster_from_dict

    cluster = cluster_from_dict(
        {
            "gpu_types": {"MyGPU": {"vram_gb": 48, "peak_tflops": 200, "hbm_gbytes_per_s": 1000}},
            "nodes": [{"name": "g", "gpu": "MyGPU", "count": 2}],
        }
    )
    capacity = capacity_model_for(cluster, builtin_model("llama-3-8b"))
    assert capacity.max_layers("MyGPU") > 0 and capacity.throughput_tokens_per_s("MyGPU", 1) > 0
