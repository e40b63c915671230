"""`helix testbed up|down|status|exec`: emulated hosts in network namespaces, with Ray nodes, as root.

``helix testbed up --hosts a,b,c --ray-head a --resources b=b0,b1 --resources c=c0`` creates three
hosts on a private bridge, starts a Ray head on ``a`` and Ray worker nodes on ``b`` and ``c`` with the
``helix_node_<n>`` resources of the plan nodes they host, and writes the state to ``--state`` (default
``./testbed``): ``testbed.json`` and ``env.sh`` (the Ray address and token). ``--cluster spec.yaml``
instead makes one host per region with the spec's inter-region bandwidth. ``helix testbed exec HOST --
CMD`` runs a command on an emulated host with that environment; ``helix testbed down`` stops every
process of the test bed by PID and deletes its namespaces.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import sys
from pathlib import Path

import typer

from helix.errors import HelixInputError

testbed_app = typer.Typer(
    help="Emulated hosts in network namespaces (root): rehearse a multi-host deployment."
)


def _state_file(state: Path) -> Path:
    return state / "testbed.json"


def _require_netns() -> None:
    from helix.testbed.netns import netns_available

    reason = netns_available()
    if reason is not None:
        raise HelixInputError(
            f"cannot create network namespaces: {reason}", field="testbed", fix="run as root on Linux"
        )


@testbed_app.command("up")
def up(
    hosts: str = typer.Option(None, help="comma-separated host names, e.g. a,b,c"),
    regions: list[str] = typer.Option([], "--region", help="HOST=REGION (default: one region)"),
    rates: list[str] = typer.Option([], "--rate", help="REGION_A:REGION_B=MBIT (a→b bandwidth)"),
    cluster: str = typer.Option(None, help="cluster spec: one host per region, inter-region bandwidth"),
    ray_head: str = typer.Option(None, help="start a Ray head on this host, Ray nodes on the others"),
    resources: list[str] = typer.Option([], "--resources", help="HOST=NODE1,NODE2 (helix_node_ resources)"),
    state: Path = typer.Option(Path("testbed"), help="directory for the test bed's state"),
) -> None:
    """Create the test bed (and its Ray nodes)."""
    from helix.testbed.netns import HostSpec, TestBed
    from helix.testbed.ray_nodes import RayTestCluster

    _require_netns()
    if _state_file(state).exists():
        raise HelixInputError(
            f"{_state_file(state)} exists", field="--state", fix="run `helix testbed down` first"
        )
    prefix = f"hx{os.getpid() % 100000}"
    node_resources: dict[str, dict[str, float]] = {}
    if cluster is not None:
        from helix.specs.loading import load_cluster
        from helix.testbed.regions import region_testbed

        bed, layout = region_testbed(load_cluster(cluster), prefix)
        node_resources = layout.resources
        ray_head = ray_head or layout.coordinator_host
    else:
        if not hosts:
            raise HelixInputError("give --hosts or --cluster", field="--hosts", fix="e.g. --hosts a,b,c")
        region_of = dict(_pair(r, "--region") for r in regions)
        bed = TestBed(
            prefix,
            tuple(HostSpec(h, region_of.get(h, "default")) for h in hosts.split(",")),
            {_rate_key(k): float(v) for k, v in (_pair(r, "--rate") for r in rates)},
        )
        for item in resources:
            host, nodes = _pair(item, "--resources")
            node_resources[host] = {f"helix_node_{n}": 1.0 for n in nodes.split(",") if n}
    names = [h.name for h in bed.hosts]
    if ray_head is not None and ray_head not in names:
        raise HelixInputError(
            f"unknown --ray-head {ray_head!r}", field="--ray-head", fix=f"use one of {names}"
        )
    state.mkdir(parents=True, exist_ok=True)
    bed.up()
    record: dict = {"testbed": json.loads(bed.to_json()), "env": {}}
    try:
        if ray_head is not None:
            ray = RayTestCluster.start(
                bed,
                {h: node_resources.get(h, {}) for h in names},
                head=ray_head,
                state_dir=state.resolve() / "ray",
                token=secrets.token_hex(32),
            )
            record["env"] = {**ray.env, "HELIX_RAY_ADDRESS": ray.address}
        record["testbed"] = json.loads(bed.to_json())
        _state_file(state).write_text(json.dumps(record, indent=2))
        (state / "env.sh").write_text(
            "".join(f"export {k}={shlex.quote(v)}\n" for k, v in record["env"].items())
        )
    except BaseException:
        bed.down()
        raise
    for host in bed.hosts:
        typer.echo(f"{host.name}\t{bed.address(host.name)}\t{bed.namespace(host.name)}\tregion {host.region}")
    if ray_head is not None:
        typer.echo(f"Ray head at {record['env']['HELIX_RAY_ADDRESS']} (token auth; see {state / 'env.sh'})")


@testbed_app.command("down")
def down(state: Path = typer.Option(Path("testbed"), help="directory of the test bed's state")) -> None:
    """Stop every process of the test bed (by PID) and delete its namespaces."""
    bed, _ = _load(state)
    bed.down()
    left = bed.existing_namespaces()
    _state_file(state).unlink()
    typer.echo("test bed removed" if not left else f"could not delete {left}")


@testbed_app.command("status")
def status(state: Path = typer.Option(Path("testbed"), help="directory of the test bed's state")) -> None:
    """Hosts, addresses and the processes inside each namespace."""
    bed, env = _load(state)
    for host in bed.hosts:
        typer.echo(f"{host.name}\t{bed.address(host.name)}\t{host.region}")
    typer.echo(f"namespaces: {bed.existing_namespaces()}; processes: {len(bed.processes())}")
    if env:
        typer.echo(f"Ray head: {env.get('HELIX_RAY_ADDRESS')}")


@testbed_app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec_(
    ctx: typer.Context,
    host: str = typer.Argument(..., help="emulated host"),
    state: Path = typer.Option(Path("testbed"), help="directory of the test bed's state"),
) -> None:
    """Run a command on an emulated host (with the Ray address and token in its environment)."""
    bed, env = _load(state)
    if host not in [h.name for h in bed.hosts]:
        raise HelixInputError(
            f"unknown host {host!r}", field="HOST", fix=f"use one of {[h.name for h in bed.hosts]}"
        )
    if not ctx.args:
        raise HelixInputError("no command given", field="CMD", fix="helix testbed exec HOST -- CMD ...")
    os.environ.update(env)
    os.execvp("ip", ["ip", "netns", "exec", bed.namespace(host), *ctx.args])


def _load(state: Path):
    from helix.testbed.netns import TestBed

    path = _state_file(state)
    if not path.exists():
        raise HelixInputError(
            f"no test bed state at {path}", field="--state", fix="run `helix testbed up` first"
        )
    record = json.loads(path.read_text())
    return TestBed.from_json(json.dumps(record["testbed"])), record.get("env", {})


def _pair(text: str, option: str) -> tuple[str, str]:
    if "=" not in text:
        raise HelixInputError(f"bad {option} {text!r}", field=option, fix="use KEY=VALUE")
    key, value = text.split("=", 1)
    return key, value


def _rate_key(text: str) -> tuple[str, str]:
    if ":" not in text:
        raise HelixInputError(f"bad --rate {text!r}", field="--rate", fix="use REGION_A:REGION_B=MBIT")
    a, b = text.split(":", 1)
    return a, b


def register(app: typer.Typer) -> None:
    app.add_typer(testbed_app, name="testbed")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(testbed_app())
