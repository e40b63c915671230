"""`helix bench`: open-loop load against any OpenAI-compatible endpoint; prints/writes JSON."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import typer

from helix.errors import HelixInputError


def bench(
    url: str = typer.Option("http://127.0.0.1:8000/v1", help="the endpoint's /v1 base URL"),
    model: str = typer.Option(..., help="model name as the server reports it (/v1/models)"),
    rate: float = typer.Option(1.0, help="requests per second (open loop)"),
    duration: float = typer.Option(30.0, help="seconds of arrivals"),
    warmup: float = typer.Option(0.0, help="seconds of arrivals before the measurement window"),
    drain_timeout: float = typer.Option(
        None, help="after the last arrival, wait at most this long, then cancel (default: until done)"
    ),
    prompt_tokens: int = typer.Option(64, help="prompt length (words, about one token each)"),
    output_tokens: int = typer.Option(32, help="tokens generated per request (ignore_eos)"),
    cv: float = typer.Option(1.0, help="arrival burstiness: 1 = Poisson, >1 = gamma bursts"),
    seed: int = typer.Option(0),
    api_key: str = typer.Option(None, envvar="HELIX_API_KEY"),
    output: Path = typer.Option(None, "-o", help="write the JSON result here"),
) -> None:
    """Measure throughput and TTFT/TPOT percentiles at a given request rate.

    Decode throughput counts the tokens received in [warmup, duration]; latencies are over the requests
    sent in that window."""
    from helix.cli.common import check_number, check_output_path
    from helix.runtime.loadgen import LoadSpec, run_load

    check_number("--rate", rate, low=0, low_open=True, high=10_000)
    check_number("--duration", duration, low=0, low_open=True, high=7 * 24 * 3600)
    check_number("--warmup", warmup, low=0, high=duration, fix="pass --warmup in [0, --duration]")
    check_number("--drain-timeout", drain_timeout, low=0)
    check_number("--prompt-tokens", prompt_tokens, low=1, high=1_000_000)
    check_number("--output-tokens", output_tokens, low=1, high=1_000_000)
    check_number("--cv", cv, low=0, low_open=True, high=100)
    if rate * duration > 10_000_000:
        raise HelixInputError(
            f"{rate:g} requests/s for {duration:g} s is more than 10,000,000 requests",
            field="--rate",
            fix="lower --rate or --duration",
        )
    check_output_path("-o", output)
    spec = LoadSpec(
        url,
        model,
        rate,
        duration,
        prompt_tokens,
        output_tokens,
        cv,
        seed,
        api_key,
        warmup_s=warmup,
        drain_timeout_s=drain_timeout,
    )
    result = asyncio.run(run_load(spec))
    text = json.dumps(result, indent=2)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
    typer.echo(text)
    if result["sent"] > 0 and result["completed"] == 0:
        errors = "; ".join(result["errors"]) or "no request completed"
        typer.secho(f"error: every request failed ({errors})", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
