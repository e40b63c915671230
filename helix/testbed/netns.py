"""Emulated hosts on one Linux box: network namespaces on a private bridge, with per-region bandwidth.

Layout (all names start with the test bed's `prefix`, so several test beds can coexist):

    <prefix>-sw            a namespace holding the bridge ``br0`` (the "switch"); nothing is added to
                           the root namespace, so the machine's own network is untouched
    <prefix>-<host>        one namespace per emulated host, with ``lo`` and ``eth0`` (a veth whose peer
                           is a port of ``br0``), address ``10.<net>.<region index>.<host index + 1>/16``

Bandwidth: `rates_mbit[(region a, region b)]` limits traffic from hosts of region a to hosts of region
b. On each host's ``eth0`` an ``htb`` root sends each limited destination region (a ``u32`` match on
its /24) to a class whose leaf is a ``tbf`` at that rate; everything else (its own region) goes
unshaped. `egress_mbit` of a host limits all its egress with a root ``tbf`` instead. Latency cannot be
added (the kernels here have no ``netem``), so latency stays a parameter of the cluster spec and the
simulator only.

Processes: `spawn(host, argv)` starts a process inside a host's namespace in its own process group
and records its PID. `down()` stops every recorded process group, then every process still inside one
of the test bed's namespaces (``ip netns pids``), by PID, then deletes the namespaces (which deletes
their veths and the bridge). It never touches processes outside its own namespaces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from helix.errors import HelixInputError


@dataclass(frozen=True, slots=True)
class HostSpec:
    """One emulated host: its name (letters, digits, dashes; ≤ 8 characters), region, optional egress cap."""

    name: str
    region: str = "default"
    egress_mbit: float | None = None


@dataclass
class TestBed:
    """See the module docstring. `up()` builds it, `down()` removes all of it (idempotent)."""

    prefix: str
    hosts: tuple[HostSpec, ...]
    rates_mbit: dict[tuple[str, str], float] = field(default_factory=dict)
    net: int = 77  # second octet of the private 10.<net>.0.0/16 inside the bridge
    pids: list[int] = field(default_factory=list)

    __test__ = False  # not a pytest class

    def __post_init__(self) -> None:
        names = [h.name for h in self.hosts]
        if len(set(names)) != len(names) or not names:
            raise HelixInputError("host names must be unique and non-empty", field="hosts")
        for name in names:
            if not (name.replace("-", "").isalnum() and len(name) <= 8):
                raise HelixInputError(
                    f"bad host name {name!r}", field="hosts", fix="use ≤ 8 letters, digits or dashes"
                )
        if not (self.prefix.replace("-", "").isalnum() and len(self.prefix) <= 12):
            raise HelixInputError(f"bad prefix {self.prefix!r}", field="prefix", fix="≤ 12 letters/digits")
        regions = self.regions
        for (a, b), mbit in self.rates_mbit.items():
            if a not in regions or b not in regions or not mbit > 0:
                raise HelixInputError(
                    f"bad rate {a}->{b}: {mbit}", field="rates_mbit", fix="known regions, rate > 0"
                )

    # ---- naming and addressing ----
    @property
    def regions(self) -> list[str]:
        return list(dict.fromkeys(h.region for h in self.hosts))

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    def namespace(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    @property
    def namespaces(self) -> list[str]:
        return [self.namespace(h.name) for h in self.hosts] + [self.switch]

    def address(self, host: str) -> str:
        index = [h.name for h in self.hosts].index(host)
        region = self.regions.index(self.hosts[index].region)
        return f"10.{self.net}.{region}.{index + 1}"

    def region_subnet(self, region: str) -> str:
        return f"10.{self.net}.{self.regions.index(region)}.0/24"

    # ---- lifecycle ----
    def up(self) -> TestBed:
        """Create the namespaces, bridge, veths, addresses and shaping; on failure remove what exists."""
        try:
            _ip("netns", "add", self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for index, host in enumerate(self.hosts):
                self._add_host(index, host)
        except BaseException:
            self.down()
            raise
        return self

    def _add_host(self, index: int, host: HostSpec) -> None:
        ns = self.namespace(host.name)
        port = f"p{index}"
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{self.address(host.name)}/16", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        self._shape(ns, host)

    def _shape(self, ns: str, host: HostSpec) -> None:
        limited = {b: r for (a, b), r in self.rates_mbit.items() if a == host.region and b != host.region}
        if host.egress_mbit is not None:
            _tc(ns, "qdisc", "add", "dev", "eth0", "root", *_tbf(host.egress_mbit))
            return
        if not limited:
            return
        _tc(ns, "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb", "default", "1")
        _tc(ns, "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:1", "htb", "rate", "10gbit")
        for number, (region, mbit) in enumerate(sorted(limited.items()), start=10):
            classid = f"1:{number}"
            rate = f"{mbit}mbit"
            _tc(ns, "class", "add", "dev", "eth0", "parent", "1:", "classid", classid, "htb", "rate", rate)
            _tc(ns, "qdisc", "add", "dev", "eth0", "parent", classid, "handle", f"{number}:", *_tbf(mbit))
            _tc(
                ns, "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                "match", "ip", "dst", self.region_subnet(region), "flowid", classid,
            )  # fmt: skip

    def spawn(
        self, host: str, argv: list[str], *, env: dict[str, str] | None = None, log: Path | None = None
    ) -> subprocess.Popen:
        """Start `argv` inside `host`'s namespace in a new process group; returns the `Popen`."""
        out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace(host), *argv],
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        if log is not None:
            out.close()
        self.pids.append(proc.pid)
        return proc

    def run(self, host: str, argv: list[str], *, timeout_s: float = 120, env: dict[str, str] | None = None):
        """Run `argv` in `host`'s namespace to completion; returns the `CompletedProcess` (text)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace(host), *argv],
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def processes(self, namespaces: list[str] | None = None) -> list[int]:
        """PIDs of every process inside one of this test bed's namespaces (or of `namespaces`)."""
        pids: list[int] = []
        for ns in self.namespaces if namespaces is None else namespaces:
            result = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            pids += [int(p) for p in result.stdout.split()]
        return pids

    def stop_host(self, host: str, grace_s: float = 5.0) -> None:
        """Stop every process inside `host`'s namespace, by PID (e.g. before starting it again)."""
        ns = [self.namespace(host)]
        for pid in self.processes(ns):
            _signal(pid, signal.SIGTERM)
        _wait_gone(lambda: self.processes(ns), grace_s)
        for pid in self.processes(ns):
            _signal(pid, signal.SIGKILL)
        _wait_gone(lambda: self.processes(ns), grace_s)

    def down(self, grace_s: float = 5.0) -> None:
        """Stop our processes (process groups we started, then anything left in our namespaces), by PID,
        and delete our namespaces."""
        for pid in self.pids:
            _signal_group(pid, signal.SIGTERM)
        _wait_gone(lambda: [p for p in self.pids if _alive(p)] + self.processes(), grace_s)
        for pid in self.pids:
            _signal_group(pid, signal.SIGKILL)
        for pid in self.processes():
            _signal(pid, signal.SIGKILL)
        _wait_gone(self.processes, grace_s)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.pids.clear()

    def existing_namespaces(self) -> list[str]:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
        names = {line.split()[0] for line in listed if line.strip()}
        return [ns for ns in self.namespaces if ns in names]

    # ---- persistence (for `helix testbed up|down`) ----
    def to_json(self) -> str:
        data = asdict(self)
        data["rates_mbit"] = [[a, b, r] for (a, b), r in self.rates_mbit.items()]
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> TestBed:
        data = json.loads(text)
        return cls(
            data["prefix"],
            tuple(HostSpec(**h) for h in data["hosts"]),
            {(a, b): r for a, b, r in data["rates_mbit"]},
            data["net"],
            list(data["pids"]),
        )


def netns_available() -> str | None:
    """None when namespaces can be made here, else why not (for skips and CLI errors)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"hxprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip() or made.returncode}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _tbf(mbit: float) -> list[str]:
    burst_kbit = max(32, int(mbit * 8))  # ≥ 1 ms of traffic at the rate, at least a few MTUs
    return ["tbf", "rate", f"{mbit}mbit", "burst", f"{burst_kbit}kbit", "latency", "400ms"]


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _tc(ns: str, *args: str) -> None:
    result = subprocess.run(["ip", "netns", "exec", ns, "tc", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)} (in {ns}): {result.stderr.strip()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone once reaped
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the group we created with start_new_session (pgid == pid)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_gone(pids_fn, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not [p for p in pids_fn() if _alive(p)]:
            return
        time.sleep(0.1)
