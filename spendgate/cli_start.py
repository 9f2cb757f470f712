"""The ``spendgate`` command's entry point: the console script and ``python -m spendgate``.

Importing the CLI (typer, rich, httpx, …) and building its commands takes a few hundred
milliseconds before click's own Ctrl-C handling (exit 130, not a word) is in place; Ctrl-C
in that time printed the traceback of whichever import it cut short. This module imports
nothing heavy and makes Ctrl-C end the process at once with 130 until the command line
starts being parsed (:func:`started`, called by the top command)."""

from __future__ import annotations

import os
import signal
from types import FrameType


def _quit(signum: int, frame: FrameType | None) -> None:
    # at once: nothing is written yet, and a half-imported module has nothing to clean up
    os._exit(130)


def main() -> None:
    # a Ctrl-C the shell made us ignore (``nohup``, ``cmd &`` in a script) stays ignored
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _quit)
    from spendgate.cli import app

    app()


def started() -> None:
    """The command line is being parsed: Ctrl-C is click's from here on (exit 130 after
    the command's own cleanup, such as an interrupted export's)."""
    if signal.getsignal(signal.SIGINT) is _quit:
        signal.signal(signal.SIGINT, signal.default_int_handler)
