"""The simulator: compute nodes, links and the coordinator driven by a scheduler (serving.md §2).

The coordinator is source and sink. It launches requests (offline feeder or online arrivals), asks the
scheduler for a pipeline, and sends the prompt to the first hop. Each node runs batched passes
(`helix.sim.node`); finished requests travel over FIFO links (`helix.sim.network`) to the next hop or
back to the coordinator, which records the iteration and immediately issues the next decode along the
same pipeline, or finishes the request (freeing real and expected KV). Nodes are event-driven only at
pass boundaries: arrivals are queued with their landing time and picked up when the node next starts a
pass, so the event count scales with passes, not with request hops.

KV preemption (the runtime's policy, `helix.scheduling.preemption`): a node reserves the KV of a pass
when it starts it (in blocks of `SimConfig.kv_block_tokens` tokens per layer, as the runtime's workers
do). When a query does not fit, the node preempts the most recently admitted queries it holds (or the
blocked one itself); a victim's KV is freed on every node of its pipeline at once, it is released in the
scheduler and put back at the head of the admission queue to re-prefill prompt + generated tokens, and
admissions wait until a running query finishes (`AdmissionHold`). Counter ``preemptions``: victims.

Membership events (`helix.scheduling.recovery.MembershipEvent`, kind ``fail``): at its time the node
stops (its queues and current pass are dropped), the scheduler is rebuilt on the survivors
(`helix.scheduling.recovery.recover`, the runtime's code) and every query whose pipeline touched the node
is freed and re-admitted first to re-prefill on a surviving pipeline (counter ``requests_rerouted``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from helix.errors import HelixInputError
from helix.perf.base import CapacityModel
from helix.scheduling.admission import AdmissionQueue, Waiting, should_feed
from helix.scheduling.base import Scheduler
from helix.scheduling.pipeline import Pipeline
from helix.scheduling.preemption import AdmissionHold, Resident, choose_victims, requeue_front
from helix.scheduling.recovery import MembershipEvent, TopologySource, recover
from helix.sim.config import SimConfig
from helix.sim.core import EventKind, EventLoop
from helix.sim.elastic import ElasticSim, ElasticState, extra_nodes
from helix.sim.metrics import Recorder, summarize
from helix.sim.network import Network
from helix.sim.node import ComputeNode, NodeTiming, Query
from helix.sim.workload import Lengths
from helix.specs.cluster import COORDINATOR
from helix.specs.model import ModelSpec

INF = math.inf


def _timing(capacity: CapacityModel, gpu: str, double_single_decode: bool) -> NodeTiming:
    prompt = lru_cache(maxsize=None)(lambda n: capacity.prompt_layer_time_s(gpu, int(n)))
    decode = lru_cache(maxsize=None)(lambda n: capacity.decode_layer_time_s(gpu, int(n)))
    return NodeTiming(prompt, decode, double_single_decode)


class Simulator:
    """One simulation run. Build, then `run()`; see `helix.sim.run.simulate` for the usual entry point."""

    def __init__(
        self,
        scheduler: Scheduler,
        capacity: CapacityModel,
        model: ModelSpec,
        config: SimConfig,
        lengths: Lengths,
        arrival_times_s: np.ndarray | None = None,
        *,
        topology_source: TopologySource | None = None,
        membership_events: list[MembershipEvent] | tuple[MembershipEvent, ...] = (),
        elastic: ElasticSim | None = None,
    ) -> None:
        topo = scheduler.topology
        self.scheduler, self.config, self.model = scheduler, config, model
        self.rng = np.random.default_rng(config.seed)
        self.lengths = lengths
        self.arrivals = arrival_times_s
        idle = extra_nodes(elastic.cluster, set(topo.ranges), capacity) if elastic else {}
        self.names = sorted([*topo.ranges, *idle])
        shape = {n: (topo.gpus[n], topo.ranges[n].num_layers, topo.limits[n]) for n in topo.ranges}
        shape.update({n: (gpu, 1, limits) for n, (gpu, limits) in idle.items()})
        self.nodes = [
            ComputeNode(
                i,
                n,
                shape[n][1],
                shape[n][2],
                _timing(capacity, shape[n][0], config.double_single_decode),
                model.activation_bytes_per_token,
            )
            for i, n in enumerate(self.names)
        ]
        for n in idle:
            self.nodes[self.names.index(n)].dead = True  # until it joins
        self.elastic = ElasticState(elastic, capacity, set(topo.ranges)) if elastic is not None else None
        self.index = {n: i for i, n in enumerate(self.names)}
        policy = config.bandwidth
        if policy == "helix":
            policy = "helix-flow" if scheduler.name == "maxflow" else "helix-fair"
        self._bandwidth_policy = policy
        self.network = Network(
            topo, model.token_bytes, model.activation_bytes_per_token, policy, config.nic_queueing
        )
        self.loop = EventLoop()
        for kind, handler in (
            (EventKind.SINK, self._on_sink),
            (EventKind.PASS_END, self._on_pass_end),
            (EventKind.WAKE, self._on_wake),
            (EventKind.ARRIVAL, self._on_arrival),
            (EventKind.FEED, self._on_feed),
            (EventKind.SAMPLE, self._on_sample),
            (EventKind.MEMBERSHIP, self._on_membership),
        ):
            self.loop.on(kind, handler)
        self.rec = Recorder()
        self.queue = AdmissionQueue(scheduler)
        self.hold = AdmissionHold()
        self._admissions = 0
        self.topology_source = topology_source
        self.membership_events = tuple(membership_events)
        for event in self.membership_events:
            if event.kind != "fail" and elastic is None:
                raise HelixInputError(
                    f"membership event {event.kind!r} needs re-planning",
                    field="kind",
                    fix="give the cluster spec to re-plan on (elastic), or use `fail` events",
                )
            if event.node not in self.names:
                raise HelixInputError(f"node {event.node!r} is not in the cluster", field="node")
        if self.membership_events and topology_source is None:
            raise ValueError("membership events need a topology_source to re-plan on the survivors")
        self.lost: set[str] = set()
        self.resume_delays_s: list[float] = []  # failure → first token of each re-routed query
        self._lost_at: dict[int, float] = {}
        self.in_flight: dict[int, Query] = {}
        self._next_qid = 0
        self._routes: dict[Pipeline, tuple] = {}
        self._length_pool: tuple[np.ndarray, np.ndarray] | None = None
        self._pool_pos = 0
        self._stage_events = scheduler.wants_stage_events
        self._feed_kind = (
            config.feed if config.feed != "auto" else ("kv" if scheduler.kv_admission else "population")
        )
        self.load_times_s = {
            n.name: n.num_layers * model.layer_weight_bytes / config.disk_bytes_per_s for n in self.nodes
        }
        self.start_s = math.ceil(max(self.load_times_s.values())) + 1.0 if config.model_loading else 0.0
        self.window = (self.start_s + config.warmup_s, self.start_s + config.warmup_s + config.duration_s)
        self._last_busy = [0.0] * len(self.nodes)

    # ---------------------------------------------------------------- requests
    def _draw_lengths(self) -> tuple[int, int]:
        if self._length_pool is None or self._pool_pos >= len(self._length_pool[0]):
            self._length_pool = self.lengths.sample(4096, self.rng)
            self._pool_pos = 0
        i = self._pool_pos
        self._pool_pos += 1
        return int(self._length_pool[0][i]), int(self._length_pool[1][i])

    def _new_query(self, now_s: float, prompt: int, output: int) -> Query:
        decodes = output if self.config.decodes_per_request == "output" else output - 1
        query = Query(self._next_qid, prompt, output, max(decodes, 0), now_s)
        self._next_qid += 1
        return query

    def _route_arrays(self, pipeline: Pipeline) -> tuple:
        arrays = self._routes.get(pipeline)
        if arrays is None:
            nodes = [h.node for h in pipeline.hops]
            ends = [COORDINATOR, *nodes, COORDINATOR]
            links = tuple(self.network.link_id[(ends[i], ends[i + 1])] for i in range(len(ends) - 1))
            arrays = (tuple(self.index[n] for n in nodes), tuple(h.num_layers for h in pipeline.hops), links)
            self._routes[pipeline] = arrays
        return arrays

    def _launch(self, query: Query, pipeline: Pipeline, now_s: float) -> None:
        query.route, query.layers, query.links = self._route_arrays(pipeline)
        query.admitted_s = query.issued_s = now_s
        self._admissions += 1
        query.admission = self._admissions
        self.in_flight[query.qid] = query
        self._send(query, 0, now_s, query.prefill_tokens * self.model.token_bytes)

    def _send(self, query: Query, hop: int, now_s: float, num_bytes: float) -> None:
        """Send `query` over its link `hop` (hop = index of the receiving stage; len(route) = coordinator)."""
        arrival = self.network.transfer(query.links[hop], now_s, num_bytes)
        query.hop = hop
        if hop == len(query.route):
            self.loop.schedule(arrival, EventKind.SINK, query)
            return
        node = self.nodes[query.route[hop]]
        node.push(arrival, query)
        if not node.busy and arrival < node.wake_at:
            node.wake_at = arrival
            self.loop.schedule(arrival, EventKind.WAKE, node)

    # ---------------------------------------------------------------- nodes
    def _on_wake(self, now_s: float, node: ComputeNode) -> None:
        if now_s >= node.wake_at:
            node.wake_at = INF
        if not node.busy:
            self._start_pass(node, now_s)

    def _start_pass(self, node: ComputeNode, now_s: float) -> None:
        if node.dead:
            return
        node.collect(now_s)
        batch = self._reserve(node, node.form_batch(), now_s) if node.ready else []
        if not batch:
            node.busy = False
            if node.pending and node.pending[0][0] < node.wake_at:
                node.wake_at = node.pending[0][0]
                self.loop.schedule(node.wake_at, EventKind.WAKE, node)
            return
        duration = node.pass_time_s(batch)
        node.busy, node.batch = True, batch
        node.busy_s += duration
        node.passes += 1
        self.loop.schedule(now_s + duration, EventKind.PASS_END, node)

    def _kv_units(self, tokens: int, layers: int) -> float:
        block = self.config.kv_block_tokens
        return float(-(-tokens // block) * block * layers)

    def _reserve(self, node: ComputeNode, batch: list[Query], now_s: float) -> list[Query]:
        """Reserve the batch's KV on `node`, preempting where it does not fit (see the module docstring)."""
        kept: list[Query] = []
        for q in batch:
            if q.dead:
                continue
            m = q.layers[q.hop]
            tokens = q.prefill_tokens if q.prefilling else q.prompt_tokens + q.iteration
            need = self._kv_units(tokens, m) - node.resident.get(q, 0.0)
            shortfall = node.kv_used + need - node.kv_capacity
            if shortfall > 1e-9:
                residents = [Resident(r, r.admission, u) for r, u in node.resident.items()]
                victims = choose_victims(residents, q, q.admission, shortfall)
                if victims == [q] and not any(r.units for r in residents if r.request_id is not q):
                    victims = []  # alone and still too big: it overflows (counted below)
                for victim in victims:
                    self._preempt(victim, now_s)
                if q.dead:
                    continue
            node.kv_used += need
            node.resident[q] = node.resident.get(q, 0.0) + need
            kept.append(q)
        if node.kv_used > node.kv_capacity + 1e-9:
            self.rec.count("kv_overflow_passes")
        return [q for q in kept if not q.dead]

    def _free_kv(self, q: Query) -> None:
        for node_index in q.route:
            node = self.nodes[node_index]
            node.kv_used -= node.resident.pop(q, 0.0)

    def _preempt(self, q: Query, now_s: float) -> None:
        self.rec.count("preemptions")
        self.hold.preempted()
        self._requeue(q, now_s)

    def _requeue(self, q: Query, now_s: float) -> Query:
        """Free `q` everywhere and put a fresh query (re-prefill of its context) at the queue head."""
        self._free_kv(q)
        self.scheduler.release(q, now_s)
        del self.in_flight[q.qid]
        fresh = q.resume(now_s)
        remaining = max(0, q.output_tokens - q.iteration)
        requeue_front(self.queue, fresh, fresh.prefill_tokens, remaining, now_s)
        return fresh

    def _on_pass_end(self, now_s: float, node: ComputeNode) -> None:
        batch, node.batch = node.batch, []
        if node.dead:
            return
        step = self.model.token_bytes + self.model.activation_bytes_per_token
        for q in batch:
            if q.dead:
                continue
            hop = q.hop
            if q.prefilling:
                if self._stage_events and not q.resumed:
                    self.scheduler.on_stage_done(q, hop, now_s)
                tokens = q.prefill_tokens
            else:
                tokens = 1
            nxt = hop + 1
            self._send(q, nxt, now_s, tokens * (step if nxt < len(q.route) else self.model.token_bytes))
        node.busy = False
        heap = self.loop.heap
        if not heap or heap[0][0] > now_s:  # nothing else at this instant: start the next pass now
            self._start_pass(node, now_s)
        elif now_s < node.wake_at:  # let simultaneous arrivals join first
            node.wake_at = now_s
            self.loop.schedule(now_s, EventKind.WAKE, node)

    def _on_membership(self, now_s: float, event: MembershipEvent) -> None:
        """A node fails, joins or drains; or a re-plan is ready to take traffic (`helix.sim.elastic`)."""
        if self.elastic is not None and not isinstance(event, MembershipEvent):
            self.elastic.on_switch(self, now_s, event)
            return
        if self.elastic is not None:
            self.elastic.changing = True  # its re-plan follows: nothing waiting is unservable meanwhile
        if event.kind == "fail":
            self._on_fail(now_s, event)
        if self.elastic is not None:
            self.elastic.on_event(self, now_s, event)

    def rebuild_network(self) -> None:
        """Links of the current scheduler's topology; carried-over queries get their new link ids."""
        self.network = Network(
            self.scheduler.topology,
            self.model.token_bytes,
            self.model.activation_bytes_per_token,
            self._bandwidth_policy,
            self.config.nic_queueing,
        )
        self._routes = {}
        for q in self.in_flight.values():
            route = self.scheduler.active.get(q)
            if route is not None and not q.dead:
                q.route, q.layers, q.links = self._route_arrays(route.pipeline)

    def _on_fail(self, now_s: float, event: MembershipEvent) -> None:
        """A node fails: drop its work, re-route on the survivors the queries it carried."""
        assert self.topology_source is not None
        node = self.nodes[self.index[event.node]]
        if node.dead:
            return
        node.dead, node.pending, node.ready, node.batch, node.busy = True, [], [], [], False
        self.lost.add(event.node)
        self.rec.count("nodes_failed")
        self.scheduler, decision = recover(self.scheduler, self.topology_source, self.lost, now_s)
        self.queue.scheduler = self.scheduler
        for q in reversed(decision.resume):
            if q.dead or q.qid not in self.in_flight:
                continue
            self.rec.count("requests_rerouted")
            fresh = self._requeue(q, now_s)
            self._lost_at.setdefault(fresh.qid, now_s)
        self._admit_waiting(now_s)

    # ---------------------------------------------------------------- coordinator
    def _on_sink(self, now_s: float, q: Query) -> None:
        if q.dead:
            return
        rec = self.rec
        latency = now_s - q.issued_s
        if q.prefilling and not q.resumed:
            rec.prompt_return_s.append(now_s)
            rec.prompt_latency_s.append(latency)
            rec.ttft_s.append(now_s - q.arrived_s)
            rec.prompt_tokens.append(q.prompt_tokens)
            q.first_token_s = now_s
            if self.config.mode == "offline" and self._feed_kind == "kv":
                self._maybe_feed(now_s)
        else:
            rec.decode_return_s.append(now_s)
            rec.decode_latency_s.append(latency)
        if self._lost_at:
            lost_at = self._lost_at.pop(q.qid, None)
            if lost_at is not None:
                self.resume_delays_s.append(now_s - lost_at)
        q.prefilling = False
        if q.iteration >= q.num_decodes:
            self._finish(q, now_s)
            return
        q.iteration += 1
        q.issued_s = now_s
        self.scheduler.on_tokens(q, 1, now_s)
        self._send(q, 0, now_s, self.model.token_bytes)

    def _finish(self, q: Query, now_s: float) -> None:
        self._free_kv(q)
        del self.in_flight[q.qid]
        self.scheduler.release(q, now_s)
        self.hold.released()
        self.rec.count("requests_completed")
        if self.config.mode == "online" or self.config.retry_rejected or len(self.queue):
            self._admit_waiting(now_s)
        if self.config.mode == "offline":
            if self._feed_kind == "kv":
                self._maybe_feed(now_s)
            else:
                self.loop.schedule(now_s + self.config.feed_delay_s, EventKind.FEED, None)

    def _admit_waiting(self, now_s: float) -> None:
        if not self.hold.may_admit(len(self.scheduler.active)):
            return
        awaiting = self.elastic is not None and self.elastic.awaiting
        admitted, unservable = self.queue.retry(now_s, awaiting_replan=awaiting)
        for waiting, pipeline in admitted:
            self._launch(waiting.request_id, pipeline, now_s)
        self.rec.count("requests_unservable", len(unservable))

    def _maybe_feed(self, now_s: float) -> None:
        if should_feed(self.scheduler, self.config.feed_high_water):
            self.loop.schedule(now_s + self.config.feed_delay_s, EventKind.FEED, None)

    def _on_feed(self, now_s: float, _: None) -> None:
        prompt, output = self._draw_lengths()
        query = self._new_query(now_s, prompt, output)
        self.rec.count("requests_launched")
        if self.config.retry_rejected:
            pipeline = self.queue.submit(query, prompt, None, now_s)
        else:
            pipeline = self.scheduler.admit(query, prompt, None, now_s)
            if pipeline is None:
                self.rec.count("requests_rejected")
        if pipeline is not None:
            self._launch(query, pipeline, now_s)

    def _on_arrival(self, now_s: float, index: int) -> None:
        assert self.arrivals is not None
        if index + 1 < len(self.arrivals):
            self.loop.schedule(self.start_s + float(self.arrivals[index + 1]), EventKind.ARRIVAL, index + 1)
        prompt, output = self._draw_lengths()
        query = self._new_query(now_s, prompt, output)
        self.rec.count("requests_arrived")
        if not self.hold.may_admit(len(self.scheduler.active)):
            self.queue.waiting.append(Waiting(query, prompt, None, now_s))
            return
        pipeline = self.queue.submit(query, prompt, None, now_s)
        if pipeline is not None:
            self._launch(query, pipeline, now_s)

    # ---------------------------------------------------------------- metrics and running
    def _on_sample(self, now_s: float, _: None) -> None:
        rec, interval = self.rec, self.config.sample_interval_s
        rec.timeline_s.append(now_s)
        rec.node_busy.extend(
            min(1.0, (n.busy_s - last) / interval)
            for n, last in zip(self.nodes, self._last_busy, strict=True)
        )
        self._last_busy = [n.busy_s for n in self.nodes]
        rec.node_kv.extend(n.kv_used / n.kv_capacity for n in self.nodes)
        rec.in_flight.append(len(self.in_flight))
        rec.queue_length.append(len(self.queue))
        rec.kv_bottleneck.append(self.scheduler.kv_bottleneck_usage())
        if now_s + interval <= self.window[1] + 1e-9:
            self.loop.schedule(now_s + interval, EventKind.SAMPLE, None)

    def run(self, progress: Callable[[float], None] | None = None) -> dict:
        """Run to the end of the window; returns the summary (see `helix.sim.metrics.summarize`)."""
        cfg = self.config
        if cfg.mode == "offline":
            for i in range(cfg.initial_requests):
                self.loop.schedule(self.start_s + i * cfg.feed_delay_s, EventKind.FEED, None)
        elif self.arrivals is not None and len(self.arrivals):
            self.loop.schedule(self.start_s + float(self.arrivals[0]), EventKind.ARRIVAL, 0)
        self.loop.schedule(self.start_s + cfg.sample_interval_s, EventKind.SAMPLE, None)
        for event in self.membership_events:
            self.loop.schedule(self.start_s + event.time_s, EventKind.MEMBERSHIP, event)
        self.loop.run(self.window[1], progress)
        self.rec.counters["in_flight_at_end"] = len(self.in_flight)
        self.rec.counters["queued_at_end"] = len(self.queue)
        self.rec.counters["events"] = self.loop.events_processed
        summary = summarize(self.rec, self.window, self.scheduler.topology.max_flow_tokens_per_s, self.names)
        summary["model_loaded_s"] = self.start_s
        return summary
