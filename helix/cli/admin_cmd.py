"""`helix admin drain|join|membership`: membership of a running `helix serve` (its /admin routes)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import typer

from helix.errors import HelixInputError

admin = typer.Typer(help="Membership of a running server: drain or join a node, show the plan.")

UrlOpt = typer.Option("http://127.0.0.1:8000", "--url", help="the server's base URL")
KeyOpt = typer.Option(None, "--api-key", envvar="HELIX_API_KEY", help="the server's API key")


def _call(url: str, api_key: str | None, path: str, body: dict | None = None) -> dict:
    if not api_key:
        raise HelixInputError(
            "admin calls need the server's API key", field="--api-key", fix="pass --api-key"
        )
    request = urllib.request.Request(
        url.rstrip("/") + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = str(exc)
        raise HelixInputError(f"the server answered {exc.code}: {message}", field="node") from None
    except urllib.error.URLError as exc:
        raise HelixInputError(
            f"cannot reach {url}: {exc.reason}", field="--url", fix="check the URL"
        ) from None


@admin.command("drain")
def drain(node: str, url: str = UrlOpt, api_key: str = KeyOpt) -> None:
    """Stop serving NODE: re-plan without it; its requests move, none fails."""
    typer.echo(json.dumps(_call(url, api_key, "/admin/drain", {"node": node})))


@admin.command("join")
def join(node: str, url: str = UrlOpt, api_key: str = KeyOpt) -> None:
    """Plan NODE (a node of the cluster spec) in; it takes traffic once loaded."""
    typer.echo(json.dumps(_call(url, api_key, "/admin/join", {"node": node})))


@admin.command("membership")
def membership(url: str = UrlOpt, api_key: str = KeyOpt) -> None:
    """Members, placement and re-plan history."""
    typer.echo(json.dumps(_call(url, api_key, "/admin/membership"), indent=1))


def register(app: typer.Typer) -> None:
    app.add_typer(admin, name="admin")
