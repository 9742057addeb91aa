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
    """Console entry point: run the app, turning user errors into one line and exit code 2."""
    try:
        app()
    except MgpoError as error:
        typer.secho(f"error: {error}", fg="red", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", fg="red", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
