"""Text written into a CSV export, made inert for spreadsheets (pure).

A cell that starts with ``=``, ``+``, ``-`` or ``@`` (or a tab or carriage return,
which some spreadsheets skip before reading one of those) is read as a formula when the
file is opened in Excel, LibreOffice or Google Sheets. Tags, names and a caller's
``x-request-id`` may start so, so every text cell of a CSV export gets a leading ``'``
(OWASP's advice): shown as text, never run. Money columns are written by us as decimal
strings and are left alone, so CSV and JSON figures stay equal.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def text_cell(value: Any) -> Any:
    """``value`` with a ``'`` in front if it is text a spreadsheet would run."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def table_csv(
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    total: Sequence[Any] | None,
    labels: int,
) -> str:
    """A table as a CSV export: ``header``, then ``rows`` with their first ``labels``
    cells (the group's ids, names, tags) made inert by :func:`text_cell`, then the
    ``total`` row (None: none), whose first cell says ``total``. The usage CSVs of the
    admin API and of the console."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for row in rows:
        writer.writerow([*(text_cell(v) for v in row[:labels]), *row[labels:]])
    if total is not None:
        writer.writerow(["total", *total])
    return out.getvalue()
