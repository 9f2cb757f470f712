"""The ``spendgate`` command: serve the gateway, migrate, and drive the admin API.

One module per command group; each talks to the admin API through ``spendgate.cli.http``
(``serve`` and ``db`` run the gateway and its migrations in this process)."""

from __future__ import annotations

import errno
import inspect
from importlib.metadata import version
from typing import Annotated, Any

import typer
from rich.text import Text
from typer.core import TyperGroup

from spendgate.cli import directory, policies
from spendgate.cli.anomalies import anomalies
from spendgate.cli.audit import audit_app
from spendgate.cli.forecast import forecast
from spendgate.cli.output import err_console
from spendgate.cli.serve import db_app, serve
from spendgate.cli.spool import adopt_spool
from spendgate.cli.statements import statements_app
from spendgate.cli.tickets import tickets
from spendgate.cli.usage import usage_app
from spendgate.cli.webhooks import webhooks_app
from spendgate.cli_start import started


class _Commands(TyperGroup):
    """The top command: refuses arguments that are not valid UTF-8 (Python hands them
    over with lone surrogates) as a usage error, exit 2, before any command runs; and a
    file a command cannot read or write (``-o`` in a missing directory, a directory given
    as a file) is one line naming it, exit 1, never a traceback."""

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        started()  # Ctrl-C is click's from here on (spendgate.cli_start)
        _one_line_summaries(self)
        return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # stdout closed early (``| head``): click's own exit
                raise
            where = f"{exc.filename}: " if exc.filename is not None else ""
            err_console.print(Text(f"{where}{exc.strerror or exc}", style="red"))
            raise typer.Exit(1) from None

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # ``ctx`` is the click Context typer vendors (``typer._click``), not public API
        for arg in args:
            try:
                arg.encode("utf-8")
            except UnicodeEncodeError:
                shown = arg.encode("utf-8", "surrogateescape")
                raise typer.BadParameter(
                    f"argument {shown!r} is not valid UTF-8; ids, names and options must be "
                    "UTF-8 text",
                    ctx=ctx,
                ) from None
        return super().parse_args(ctx, args)


def _one_line_summaries(group: Any) -> None:
    """Each subcommand's summary in a group's ``--help`` is the first paragraph of its
    docstring as one line. Typer's Rich help keeps the docstring's line breaks there, so
    a summary wrapped in the source broke mid-sentence in the commands table ("refused
    with 402 when" / "it runs dry, …" on two rows)."""
    for command in getattr(group, "commands", {}).values():
        if command.short_help is None and command.help:
            first = inspect.cleandoc(command.help).partition("\f")[0].split("\n\n")[0]
            command.short_help = " ".join(first.split())
        _one_line_summaries(command)


app = typer.Typer(
    cls=_Commands,
    help="spendgate: an LLM API gateway for AI cost governance.",
    no_args_is_help=True,
)


def _version(asked: bool) -> None:
    if asked:
        typer.echo(f"spendgate {version('spendgate')}")
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """spendgate: an LLM API gateway for AI cost governance."""


app.command()(serve)
db_app.command("adopt-spool")(adopt_spool)
app.add_typer(db_app, name="db")
for name, group in (
    ("orgs", directory.orgs),
    ("teams", directory.teams),
    ("users", directory.users),
    ("agents", directory.agents),
    ("keys", directory.keys),
    ("tokens", directory.tokens),
    ("budgets", policies.budgets),
    ("wallets", policies.wallets),
    ("limits", policies.limits),
):
    app.add_typer(group, name=name)
app.command()(directory.bootstrap)
app.command()(forecast)
app.add_typer(usage_app, name="usage")
app.add_typer(statements_app, name="statements")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(audit_app, name="audit")
app.add_typer(anomalies, name="anomalies")
app.add_typer(tickets, name="tickets")

if __name__ == "__main__":
    app()
