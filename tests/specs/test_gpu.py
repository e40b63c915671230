import pytest

from helix.errors import HelixInputError
from helix.specs.gpu import default_catalog, load_catalog

REQUIRED = [
    "H200",
    "H100-80GB",
    "A100-80GB",
    "A100-40GB",
    "L40S",
    "A10G",
    "L4",
    "T4",
    "V100-16GB",
    "L4x2",
    "T4x2",
    "T4x4",
    "8xH100",
]


def test_catalog_has_required_types_with_positive_figures():
    catalog = default_catalog()
    for name in REQUIRED:
        spec = catalog.get(name)
        assert (
            spec.vram_bytes > 0 and spec.peak_tflops > 0 and spec.hbm_gbytes_per_s > 0 and spec.nic_gbps > 0
        )


def test_multi_gpu_nodes_sum_their_gpus():
    catalog = default_catalog()
    assert catalog.get("T4x4").vram_bytes == 4 * catalog.get("T4").vram_bytes
    assert catalog.get("8xH100").num_gpus == 8


def test_helix_aliases_resolve_case_insensitively():
    catalog = default_catalog()
    assert catalog.get("A100").name == "A100-40GB"
    assert catalog.get("v100").name == "V100-16GB"


def test_unknown_type_names_the_field_and_fix():
    with pytest.raises(HelixInputError) as info:
        default_catalog().get("Z9000", where="c.yaml", field="nodes[0].gpu")
    assert "nodes[0].gpu" in str(info.value) and "Z9000" in str(info.value) and "fix" in str(info.value)


def test_user_types_from_yaml(tmp_path):
    path = tmp_path / "gpus.yaml"
    path.write_text("gpu_types:\n  MI300X: {vram_gb: 192, peak_tflops: 1307, hbm_gbytes_per_s: 5300}\n")
    spec = load_catalog(path).get("mi300x")
    assert spec.vram_bytes == 192e9 and spec.nic_gbps == 10.0


def test_user_type_with_negative_field_is_rejected(tmp_path):
    path = tmp_path / "gpus.yaml"
    path.write_text("gpu_types:\n  Bad: {vram_gb: -1, peak_tflops: 1, hbm_gbytes_per_s: 1}\n")
    with pytest.raises(HelixInputError, match="vram_bytes"):
        load_catalog(path)
