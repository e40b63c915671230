"""Network links with latency, bandwidth, NIC limits and FIFO queueing.

Each directed link is a FIFO server: a transfer of B bytes issued at t starts when the link (and, with
NIC queueing, the sender's NIC) is free, occupies the link for B / bw and lands `latency` later:

    start = max(t, link_free, nic_free[src]);  link_free = start + B / bw;  nic_free[src] = start + B / nic
    arrival = start + B / bw + latency

Bandwidth policies (`bw` per link):
- ``link``: the link's own bandwidth; NIC contention is modelled by the NIC FIFO (our default).
- ``helix-flow``: Helix's max-flow reservation, min(link, NIC_out(u)·share_out, NIC_in(v)·share_in) with
  shares proportional to the edge's max-flow bytes/s among u's out-edges / v's in-edges (serving.md §1.3).
- ``helix-fair``: Helix's baseline reservation, min(link, NIC_out(u) / out-degree(u)) (serving.md §1.7).
"""

from __future__ import annotations

from helix.scheduling.topology import Topology
from helix.specs.cluster import COORDINATOR

BANDWIDTH_POLICIES = ("link", "helix-flow", "helix-fair")


class Network:
    """Link and NIC FIFO state; links are indexed by `link_id[(src, dst)]`."""

    __slots__ = (
        "link_id",
        "free_at",
        "inverse_bw",
        "latency_s",
        "src",
        "nic_free_at",
        "inverse_nic",
        "nic_queueing",
        "bytes_sent",
    )

    def __init__(
        self,
        topology: Topology,
        token_bytes: int,
        activation_bytes: int,
        policy: str = "link",
        nic_queueing: bool = True,
    ) -> None:
        if policy not in BANDWIDTH_POLICIES:
            raise ValueError(f"bandwidth policy must be one of {BANDWIDTH_POLICIES}")
        hops = [(s, h) for s, hs in topology.next_hops.items() for h in hs]
        self.link_id = {(s, h.dst): i for i, (s, h) in enumerate(hops)}
        endpoints = sorted(topology.nic_bytes_per_s)
        index = {name: i for i, name in enumerate(endpoints)}
        self.src = [index[s] for s, _ in hops]
        self.inverse_nic = [1.0 / topology.nic_bytes_per_s[name] for name in endpoints]
        self.nic_free_at = [0.0] * len(endpoints)
        self.free_at = [0.0] * len(hops)
        self.latency_s = [h.latency_s for _, h in hops]
        self.nic_queueing = nic_queueing
        self.bytes_sent = [0.0] * len(hops)

        def per_token(s: str, d: str) -> int:
            return token_bytes if COORDINATOR in (s, d) else token_bytes + activation_bytes

        used = {(s, h.dst): h.flow_tokens_per_s * per_token(s, h.dst) for s, h in hops}
        out_used: dict[str, float] = {}
        in_used: dict[str, float] = {}
        for (s, d), u in used.items():
            out_used[s] = out_used.get(s, 0.0) + u
            in_used[d] = in_used.get(d, 0.0) + u
        nic = topology.nic_bytes_per_s
        bandwidth = []
        for s, h in hops:
            bw = h.bandwidth_bytes_per_s
            if policy == "helix-flow" and used[(s, h.dst)] > 0:
                u = used[(s, h.dst)]
                bw = min(bw, nic[s] * u / out_used[s], nic[h.dst] * u / in_used[h.dst])
            elif policy == "helix-fair":
                bw = min(bw, nic[s] / len(topology.next_hops[s]))
            bandwidth.append(bw)
        self.inverse_bw = [1.0 / bw for bw in bandwidth]

    def transfer(self, link: int, now_s: float, num_bytes: float) -> float:
        """Queue a transfer of `num_bytes` on `link` at `now_s`; returns its arrival time."""
        start = self.free_at[link]
        if start < now_s:
            start = now_s
        src = self.src[link]
        if self.nic_queueing:
            nic_free = self.nic_free_at[src]
            if nic_free > start:
                start = nic_free
            self.nic_free_at[src] = start + num_bytes * self.inverse_nic[src]
        done = start + num_bytes * self.inverse_bw[link]
        self.free_at[link] = done
        self.bytes_sent[link] += num_bytes
        return done + self.latency_s[link]
