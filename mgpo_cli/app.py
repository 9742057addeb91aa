"""The ``mgpo`` command line: one Typer app, one command per pipeline stage.

Commands live in :mod:`mgpo_cli.commands`; each imports its stage lazily so ``mgpo --help`` stays
fast. User errors (:class:`~stages.errors.MgpoError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import typer

from mgpo_cli.commands import eval as eval_command
from mgpo_cli.commands import models, prepare, report, rollout, score, shards, train
from stages import __version__
from stages.errors import MgpoError

try:  # recent Typer carries its own copy of click
    from typer._click import exceptions as cli_errors
except ImportError:  # pragma: no cover - older Typer uses click itself
    from click import exceptions as cli_errors

app = typer.Typer(
    name="mgpo",
    help=(
        "Reinforcement learning for vision-language models on verifiable math.\n\n"
        "Stages talk through Parquet shard sets on disk: prepare -> rollout -> score -> train -> eval."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mgpo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Reinforcement learning for vision-language models on verifiable math."""


app.command("eval")(eval_command.evaluate)
app.command("prepare")(prepare.prepare)
app.command("report")(report.report)
app.command("rollout")(rollout.rollout)
app.command("score")(score.score)
app.command("shards")(shards.shards)
app.command("train")(train.train)
app.add_typer(models.app, name="models")


def main() -> None:
    """Console entry point: every way a command can fail on its input ends as one ``error:`` line
    and exit code 2, never a traceback: our user errors (``MgpoError``), the command line's own
    usage errors (an unknown option, a missing value: Typer would draw a box), and an operating
    system refusal met while working (a disk that fills up, a folder made read-only meanwhile)."""
    try:
        code = app(standalone_mode=False)
    except cli_errors.NoArgsIsHelpError as error:  # ``mgpo`` or ``mgpo models`` alone: the help
        error.show()
        sys.exit(error.exit_code)
    except cli_errors.ClickException as error:
        where = error.ctx.command_path if getattr(error, "ctx", None) else "mgpo"
        hint = f" (see {where} --help)" if isinstance(error, cli_errors.UsageError) else ""
        _fail(f"{error.format_message()}{hint}")
    except MgpoError as error:
        _fail(str(error))
    except OSError as error:
        _fail(f"{error.strerror or error}{f': {error.filename}' if error.filename else ''}")
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    if code == 130:
        typer.secho("interrupted", fg="red", err=True)
    if isinstance(code, int) and code:
        sys.exit(code)


def _fail(message: str) -> None:
    typer.secho(f"error: {' '.join(message.split())}", fg="red", err=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
