"""Exact sums of nano-dollar columns, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

COST_WHOLE, COST_REST = "cost_whole_usd", "cost_rest_nanos"
_NANOS = 1_000_000_000


def exact_cost_sum(column: sa.ColumnElement[Any]) -> tuple[sa.ColumnElement[Any], ...]:
    """``SUM`` of a nano-dollar column that cannot overflow 64 bits on any backend
    (SQLite's integer SUM raises past 2^63): whole dollars and the nanos below them are
    summed apart; ``cost_from_sums`` puts them together exactly."""
    return (
        sa.func.coalesce(sa.func.sum(column // _NANOS), 0).label(COST_WHOLE),
        sa.func.coalesce(sa.func.sum(column % _NANOS), 0).label(COST_REST),
    )


def split_cost_sum(
    whole: sa.ColumnElement[Any], rest: sa.ColumnElement[Any]
) -> tuple[sa.ColumnElement[Any], ...]:
    """The same two sums over columns that already hold a cost split into whole dollars
    and the nanos below them (the rollups)."""
    return (
        sa.func.coalesce(sa.func.sum(whole), 0).label(COST_WHOLE),
        sa.func.coalesce(sa.func.sum(rest), 0).label(COST_REST),
    )


def cost_from_sums(whole: Any, rest: Any) -> int:
    return int(whole) * _NANOS + int(rest)
