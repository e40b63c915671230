"""Capacity model from profile tables (Helix's, or ours from `helix profile`).

Reproduces Helix's typical-throughput model exactly (placement.md §1.6) for the profiled types; the
hand-set constants Helix uses for LLaMA-2-70B and LLaMA-1-30B (typical layer counts T, their fallback and
the initial normalized performance) are below. Other models and GPUs get T = round(2/3 · max layers),
fallback = max layers, and an initial performance from the profile itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from helix.errors import HelixInputError
from helix.perf.base import (
    AVG_OUTPUT_TOKENS,
    AVG_PROMPT_TOKENS,
    KV_BLOCK_TOKENS,
    TypeTiming,
    TypicalCapacityModel,
    TypicalThroughput,
)
from helix.perf.profiles import GPUProfile, load_profiles
from helix.specs.gpu import GPUCatalog, default_catalog
from helix.specs.model import ModelSpec

# (typical layers, fallback layers, initial normalized performance) per (model key, GPU key).
HELIX_CONSTANTS: dict[str, dict[str, tuple[int, int, float]]] = {
    "llama2_70b": {
        "a100": (8, 12, 80),
        "v100": (3, 4, 40),
        "l4": (4, 7, 20),
        "l4x2": (9, 14, 30),
        "t4": (3, 4, 12.5),
        "t4x2": (6, 9, 20),
        "t4x4": (12, 18, 30),
    },
    "llama1_30b": {
        "a100": (12, 18, 48),
        "v100": (4, 7, 25),
        "l4": (8, 11, 9),
        "l4x2": (14, 22, 15),
        "t4": (4, 7, 8),
        "t4x2": (10, 15, 15),
        "t4x4": (20, 30, 23),
    },
}


def _timing(model_key: str, profile: GPUProfile) -> TypeTiming:
    constants = HELIX_CONSTANTS.get(model_key, {}).get(profile.gpu_key)
    if constants is None:
        typical = max(1, round(2 * profile.max_layers / 3))
        request_time_s = profile.prompt_time_s(
            min(AVG_PROMPT_TOKENS, profile.prompt_time_s.xs[-1])
        ) + AVG_OUTPUT_TOKENS * profile.decode_time_s(min(8, profile.decode_time_s.xs[-1]))
        constants = (typical, profile.max_layers, (AVG_PROMPT_TOKENS + AVG_OUTPUT_TOKENS) / request_time_s)
    typical, fallback, perf = constants
    return TypeTiming(
        max_layers=profile.max_layers,
        kv_blocks=profile.kv_blocks,
        prompt_time_s=profile.prompt_time_s,
        decode_time_s=profile.decode_time_s,
        typical_layers=typical,
        fallback_layers=fallback,
        initial_perf=perf,
    )


class ProfileCapacityModel(TypicalCapacityModel):
    """Capacities from measured profile tables, for one model and one cluster composition.

    Args:
        profiles: GPU key → profile (see `load_profiles`).
        model: the model (its `num_layers` and `profile_key` are used).
        composition: GPU type name → node count in the cluster (typical throughput depends on it).
        catalog: resolves profile machine types (``A100``) to catalog names (``A100-40GB``).
    """

    def __init__(
        self,
        profiles: Mapping[str, GPUProfile],
        model: ModelSpec,
        composition: Mapping[str, int],
        catalog: GPUCatalog | None = None,
        source: str = "",
    ) -> None:
        catalog = catalog or default_catalog()
        self._model = model
        self._source = source
        self._profiles: dict[str, GPUProfile] = {}
        for profile in profiles.values():
            name = (
                catalog.get(profile.machine_type).name
                if profile.machine_type in catalog
                else profile.machine_type
            )
            self._profiles[name] = profile
        missing = sorted(set(composition) - set(self._profiles))
        if missing:
            raise HelixInputError(
                f"no profile for GPU type(s) {missing} of model {model.name}",
                field="profiles",
                fix=f"profiled types: {sorted(self._profiles)}; run `helix profile` on those GPUs "
                "or use --capacity roofline",
            )
        timings = {name: _timing(model.profile_key, p) for name, p in self._profiles.items()}
        self._init_typical(TypicalThroughput(timings, composition, model.num_layers))

    @property
    def description(self) -> str:
        return f"profile tables ({self._source or 'in memory'}), model {self._model.profile_key}"

    @property
    def normalized_perf(self) -> dict[str, float]:
        return dict(self._typical.normalized_perf)

    def profile(self, gpu: str) -> GPUProfile:
        try:
            return self._profiles[gpu]
        except KeyError:
            raise HelixInputError(
                f"no profile for GPU type {gpu!r}",
                field="gpu",
                fix=f"profiled types: {sorted(self._profiles)}",
            ) from None

    def max_layers(self, gpu: str) -> int:
        return self.profile(gpu).max_layers

    def kv_capacity_tokens(self, gpu: str, num_layers: int) -> int:
        return KV_BLOCK_TOKENS * self.profile(gpu).kv_blocks(num_layers)

    def prompt_layer_time_s(self, gpu: str, num_tokens: int) -> float:
        return self.profile(gpu).prompt_time_s(num_tokens)

    def decode_layer_time_s(self, gpu: str, num_seqs: int) -> float:
        return self.profile(gpu).decode_time_s(num_seqs)


def profile_capacity_model(
    directory: str | Path,
    model: ModelSpec,
    composition: Mapping[str, int],
    *,
    extrapolate: bool = False,
    catalog: GPUCatalog | None = None,
) -> ProfileCapacityModel:
    profiles = load_profiles(directory, model.profile_key, extrapolate=extrapolate)
    return ProfileCapacityModel(profiles, model, composition, catalog, source=str(directory))
