"""The `helix` command. Each subcommand lives in its own module and registers itself on `app`.

Bad input (a `HelixInputError`) prints one line and exits with code 2; there are no tracebacks for
user mistakes.
"""

from __future__ import annotations

import importlib
import sys

import typer

from helix.errors import HelixInputError

app = typer.Typer(
    name="helix",
    help="Serve LLMs on heterogeneous GPU clusters at max-flow throughput.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Subcommand modules; each defines functions decorated with `@app.command()` on the app passed in.
COMMAND_MODULES = (
    "helix.cli.plan_cmd",
    "helix.cli.simulate_cmd",
    "helix.cli.profile_cmd",
    "helix.cli.serve_cmd",
    "helix.cli.bench_cmd",
    "helix.cli.admin_cmd",
)


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # the command is not part of this build
                continue
            raise
        module.register(app)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning input errors into exit code 2."""
    try:
        app(args=argv, standalone_mode=False)
    except HelixInputError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
