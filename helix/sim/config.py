"""Simulation settings, with two presets: Helix-compatible fidelity and our improved defaults."""

from __future__ import annotations

from dataclasses import dataclass, replace

from helix.errors import HelixInputError

MODES = ("offline", "online")
# Expected-KV parameters (h, r) per preset: Helix's offline setting, and the one our preset uses (Helix's
# own online setting), which keeps real KV under capacity while admitting ~20 % more requests.
KV_PARAMS = {"helix": (0.85, 1.0), "improved": (0.9, 0.6)}
FEEDS = ("auto", "kv", "population")


@dataclass(frozen=True)
class SimConfig:
    """How to run a simulation.

    Attributes:
        mode: ``offline`` (closed loop: a population of requests, replaced as they finish) or ``online``
            (open loop: the workload's arrival times; requests that cannot be admitted wait in a queue).
        duration_s, warmup_s: the measured window is [start + warmup, start + warmup + duration], where
            start is when model loading ends.
        initial_requests: offline: requests launched at the start (0.1 s apart).
        feed: offline feeding. ``kv``: after every prompt and request completion, launch one more if the
            scheduler's expected-KV bottleneck is ≤ `feed_high_water` (Helix's max-flow setting);
            ``population``: launch one per finished request (Helix's baseline setting); ``auto``: ``kv``
            for schedulers with KV admission, else ``population``.
        retry_rejected: offline: a launch the scheduler rejects waits for capacity instead of being
            dropped (Helix drops it).
        decodes_per_request: ``output`` (Helix: one prompt iteration plus one decode per output token) or
            ``output-1`` (the prompt iteration produces the first token).
        double_single_decode: Helix's quirk D(1) → 2·D(1).
        bandwidth: network policy, see `helix.sim.network`.
        nic_queueing: serialise each sender's transfers through its NIC.
        model_loading: start traffic at ceil(max load time) + 1 s (weights read at `disk_bytes_per_s`).
        sample_interval_s: period of the utilisation / KV occupancy timeline.
        kv_block_tokens: KV is reserved in blocks of this many tokens per layer (1: exact; the runtime's
            workers use 16), which decides when a node runs out and preempts.
    """

    mode: str = "offline"
    duration_s: float = 600.0
    warmup_s: float = 60.0
    seed: int = 0
    initial_requests: int = 20
    feed: str = "auto"
    feed_high_water: float = 0.8
    feed_delay_s: float = 0.1
    retry_rejected: bool = False
    decodes_per_request: str = "output"
    double_single_decode: bool = True
    bandwidth: str = "helix"
    nic_queueing: bool = False
    model_loading: bool = True
    disk_bytes_per_s: float = 1e9
    sample_interval_s: float = 1.0
    kv_block_tokens: int = 1

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise HelixInputError(f"unknown mode {self.mode!r}", field="mode", fix=f"use one of {MODES}")
        if self.feed not in FEEDS:
            raise HelixInputError(f"unknown feed {self.feed!r}", field="feed", fix=f"use one of {FEEDS}")
        if not self.duration_s > 0 or self.warmup_s < 0:
            raise HelixInputError("duration must be > 0 and warm-up >= 0", field="duration")
        if self.kv_block_tokens < 1:
            raise HelixInputError("kv_block_tokens must be >= 1", field="kv_block_tokens", fix="use 1 or 16")
        if self.decodes_per_request not in ("output", "output-1"):
            raise HelixInputError("decodes_per_request must be `output` or `output-1`", field="fidelity")

    @classmethod
    def preset(cls, fidelity: str, **changes: object) -> SimConfig:
        """``helix``: Helix's simulator (serving.md §2); ``improved``: our defaults (docs/simulator.md)."""
        if fidelity == "helix":
            base = cls()
        elif fidelity == "improved":
            base = cls(
                decodes_per_request="output-1",
                double_single_decode=False,
                bandwidth="link",
                nic_queueing=True,
                feed_high_water=0.85,
            )
        else:
            raise HelixInputError(
                f"unknown fidelity {fidelity!r}", field="fidelity", fix="use `helix` or `improved`"
            )
        return replace(base, **changes)  # type: ignore[arg-type]
