"""Calibrate the roofline capacity model against Helix's measured profiles and report its error.

For every (model, GPU type) profile: the per-layer prompt and decode batch times over the profiled
range that serving uses (prompt batches ≤ 4000 tokens, decode batches ≤ 100 sequences), and the node
throughput tp(k) for every layer count. Fits the four roofline efficiencies by least squares on log
time ratios over all profiles, then reports the mean absolute percentage error per GPU type for the
default (shipped) parameters and the freshly fitted ones, with prefill (prompt) and decode batch-time errors
reported separately (`summary_fitted`).

    python benchmarks/bench_capacity_model.py   → benchmarks/results/capacity_model.json
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from helix.perf.helix_profile import profile_capacity_model
from helix.perf.profiles import load_profiles
from helix.perf.roofline import RooflineCapacityModel, RooflineParams
from helix.reference import reference_dir
from helix.specs.gpu import default_catalog
from helix.specs.model import builtin_model

MODELS = ("llama-2-70b", "llama-1-30b")
PROMPT_MAX_TOKENS = 4000
DECODE_MAX_SEQS = 100


def samples(model_name: str):
    """(gpu name, kind, x, measured seconds) for every profiled point in range."""
    model = builtin_model(model_name)
    catalog = default_catalog()
    for profile in load_profiles(reference_dir() / "profiles", model.profile_key).values():
        gpu = catalog.get(profile.machine_type).name
        for x, y in zip(profile.prompt_time_s.xs, profile.prompt_time_s.ys, strict=True):
            if 0 < x <= PROMPT_MAX_TOKENS and y > 0:
                yield gpu, "prompt", int(x), y
        for x, y in zip(profile.decode_time_s.xs, profile.decode_time_s.ys, strict=True):
            if 0 < x <= DECODE_MAX_SEQS and y > 0:
                yield gpu, "decode", int(x), y


def predict(model_name: str, params: RooflineParams, gpu: str, kind: str, x: int) -> float:
    roof = RooflineCapacityModel(builtin_model(model_name), {gpu: 1}, params=params)
    return roof.prompt_layer_time_s(gpu, x) if kind == "prompt" else roof.decode_layer_time_s(gpu, x)


def fit(all_samples) -> RooflineParams:
    base = RooflineParams()

    def params_of(v: np.ndarray) -> RooflineParams:
        return replace(
            base,
            compute_efficiency=float(v[0]),
            memory_efficiency=float(v[1]),
            layer_overhead_s=float(v[2]) * 1e-3,
            tp_efficiency=float(v[3]),
        )

    def loss(v: np.ndarray) -> float:
        p = params_of(v)
        return sum(math.log(predict(m, p, g, k, x) / y) ** 2 for m, g, k, x, y in all_samples)

    start = np.array(
        [base.compute_efficiency, base.memory_efficiency, base.layer_overhead_s * 1e3, base.tp_efficiency]
    )
    result = minimize(loss, start, method="L-BFGS-B", bounds=[(0.05, 1), (0.05, 1), (0, 5), (0.3, 1)])
    return params_of(result.x)


def errors(all_samples, params: RooflineParams) -> dict[str, dict[str, float]]:
    per_gpu: dict[str, dict[str, list[float]]] = {}
    for m, g, k, x, y in all_samples:
        err = abs(predict(m, params, g, k, x) / y - 1)
        per_gpu.setdefault(f"{m}/{g}", {}).setdefault(k, []).append(err)
    return {
        key: {f"{k}_time_mape": round(100 * float(np.mean(v)), 1) for k, v in kinds.items()}
        for key, kinds in sorted(per_gpu.items())
    }


def throughput_errors(params: RooflineParams) -> dict[str, float]:
    """Mean |tp_roofline(k) / tp_profile(k) − 1| over k, per model/GPU, in the single24 / cluster42 mixes."""
    out = {}
    mixes = {
        "llama-2-70b": {"A100-40GB": 4, "V100-16GB": 6, "L4": 8, "L4x2": 4, "T4": 10, "T4x2": 6, "T4x4": 4},
        "llama-1-30b": {"A100-40GB": 4, "L4": 8, "T4": 12},
    }
    for model_name, mix in mixes.items():
        model = builtin_model(model_name)
        measured = profile_capacity_model(reference_dir() / "profiles", model, mix)
        roof = RooflineCapacityModel(model, mix, params=params)
        for gpu in mix:
            k_max = min(measured.max_layers(gpu), roof.max_layers(gpu))
            ratios = [
                roof.throughput_tokens_per_s(gpu, k) / measured.throughput_tokens_per_s(gpu, k) - 1
                for k in range(1, k_max + 1)
            ]
            out[f"{model_name}/{gpu}"] = round(100 * float(np.mean(np.abs(ratios))), 1)
    return out


def summary(
    batch_errors: dict[str, dict[str, float]], throughput: dict[str, float]
) -> dict[str, list[float]]:
    """[min, max] over model/GPU types of each error, prefill (prompt) and decode reported apart."""

    def span(values: list[float]) -> list[float]:
        return [min(values), max(values)]

    return {
        "prefill_time_mape_range": span([e["prompt_time_mape"] for e in batch_errors.values()]),
        "decode_time_mape_range": span([e["decode_time_mape"] for e in batch_errors.values()]),
        "throughput_mape_range": span(list(throughput.values())),
    }


def main() -> None:
    started = time.perf_counter()
    all_samples = [(m, *s) for m in MODELS for s in samples(m)]
    fitted = fit(all_samples)
    shipped = RooflineParams()
    result = {
        "what": "roofline capacity model vs Helix's measured profiles (MAPE, %)",
        "num_samples": len(all_samples),
        "shipped_params": asdict(shipped),
        "fitted_params": asdict(fitted),
        "batch_time_error_shipped": errors(all_samples, shipped),
        "batch_time_error_fitted": errors(all_samples, fitted),
        "throughput_error_shipped": throughput_errors(shipped),
        "throughput_error_fitted": throughput_errors(fitted),
    }
    result["summary_fitted"] = summary(result["batch_time_error_fitted"], result["throughput_error_fitted"])
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    out = Path(__file__).parent / "results" / "capacity_model.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("fitted_params", "throughput_error_fitted")}, indent=2))


if __name__ == "__main__":
    main()
