"""The `helix` command. Each subcommand lives in its own module and registers itself on `app`.

One error path for everything a user can get wrong: a usage error of the command line (unknown command or
option, a missing or unparsable value), bad input (a `HelixInputError` from any reader or check) and an OS
error (a path that cannot be read or written) each print one line — the input, the field and the fix — and
exit with code 2; there are no tracebacks for user mistakes.
"""

from __future__ import annotations

import importlib
import sys

import typer

from helix import __version__
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
    "helix.cli.testbed_cmd",
    "helix.cli.admin_cmd",
)

USAGE_EXIT_CODE = 2


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"helix-serve {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Serve LLMs on heterogeneous GPU clusters at max-flow throughput."""


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


def _click_error_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(ClickException, NoArgsIsHelpError) classes of the click that typer uses: typer ≥ 0.20 bundles its
    own copy (``typer._click``), older versions use the ``click`` package; cover both."""
    errors, no_args = [], []
    for module_name in ("typer._click.exceptions", "click.exceptions"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        errors.append(module.ClickException)
        if hasattr(module, "NoArgsIsHelpError"):
            no_args.append(module.NoArgsIsHelpError)
    return tuple(errors), tuple(no_args)


CLICK_ERRORS, NO_ARGS_ERRORS = _click_error_types()


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    sys.exit(USAGE_EXIT_CODE)


def usage_error_message(exc: Exception) -> str:
    """One line for a click usage error: the command, what is wrong, and where to read the usage."""
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "helix"
    text = " ".join(exc.format_message().split()) if hasattr(exc, "format_message") else str(exc)
    return f"{command}: {text} (fix: see `{command} --help`)"


def os_error_message(exc: OSError) -> str:
    where = exc.filename if exc.filename is not None else "a file"
    reason = exc.strerror or exc.__class__.__name__
    return f"{where}: {reason} (fix: check that the path exists and that you may read / write it)"


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; usage errors, input errors and OS errors exit with code 2."""
    try:
        code = app(args=argv, prog_name="helix", standalone_mode=False)
    except HelixInputError as exc:
        _fail(str(exc))
    except NO_ARGS_ERRORS as exc:  # bare `helix` (or a group without its command): the help, exit 0
        typer.echo(exc.ctx.get_help() if getattr(exc, "ctx", None) else "helix --help")
        sys.exit(0)
    except CLICK_ERRORS as exc:
        if exc.__class__.__name__ == "Abort":
            sys.exit(130)
        _fail(usage_error_message(exc))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as exc:
        _fail(os_error_message(exc))
    except RecursionError:
        _fail("an input nests too deeply to read (fix: flatten the file)")
    else:
        if isinstance(code, int) and code != 0:
            sys.exit(code)


if __name__ == "__main__":
    main()
