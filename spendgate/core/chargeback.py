"""Chargeback arithmetic: sharing out spend no team owns, and what changed between two
issues of a statement. Pure: no I/O, no clock.

**Allocation.** Spend of calls without a team is matched, per call tag set, to the first
rule (in order) whose tag the call carries (a rule with no tag matches any). A rule
shares what it matched among its teams:

    proportional  in proportion to each team's own spend in the month
    fixed         each team its percentage; what the percentages leave is Unallocated
    even          in equal parts

A rule with no teams listed covers every team of the org. What no rule matches — or a
proportional rule over teams with no spend — is Unallocated. Every split is exact in
integer nanos (largest remainder), so the teams' totals plus Unallocated equal the org's
total to the nano-dollar.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from spendgate.core.money import format_usd
from spendgate.core.showback import split_exact

Method = Literal["proportional", "fixed", "even"]
METHODS: tuple[Method, ...] = ("proportional", "fixed", "even")
#: fixed percentages are kept to 1e-6 %
_SCALE = Decimal(10) ** 6


@dataclass(frozen=True, slots=True)
class AllocationRule:
    id: str
    tag: str | None
    method: Method
    #: team id -> percent (fixed) or "" (even, proportional); empty: every team
    shares: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Allocation:
    #: team id -> [(rule id, tag or None, method, nanos)]
    lines: dict[str, list[tuple[str, str | None, str, int]]]
    unallocated_nanos: int


def _matches(rule: AllocationRule, tags: Sequence[str]) -> bool:
    return rule.tag is None or rule.tag in tags


def _split(
    rule: AllocationRule, amount: int, own: Mapping[str, int], teams: Sequence[str]
) -> tuple[dict[str, int], int]:
    """``amount`` shared by ``rule``: (team -> nanos, nanos left Unallocated)."""
    listed = sorted(rule.shares) or sorted(teams)
    if not listed or amount == 0:
        return {}, amount
    if rule.method == "fixed":
        weights = [int(Decimal(rule.shares[t]) * _SCALE) for t in listed]
        rest = 100 * int(_SCALE) - sum(weights)
        parts = split_exact(amount, [*weights, max(rest, 0)])
        return dict(zip(listed, parts[:-1], strict=True)), parts[-1]
    weights = [1] * len(listed) if rule.method == "even" else [own.get(t, 0) for t in listed]
    if sum(weights) <= 0:
        return {}, amount
    return dict(zip(listed, split_exact(amount, weights), strict=True)), 0


def allocate(
    unowned: Mapping[str, int],
    own: Mapping[str, int],
    rules: Sequence[AllocationRule],
    teams: Sequence[str],
) -> Allocation:
    """Share ``unowned`` (tag set as a JSON array -> nanos) by ``rules`` among ``teams``
    (``own``: each team's own spend, for proportional rules)."""
    matched: dict[int, int] = {}
    unallocated = 0
    for tag_json, nanos in sorted(unowned.items()):
        tags = json.loads(tag_json) if tag_json else []
        index = next((i for i, r in enumerate(rules) if _matches(r, tags)), None)
        if index is None:
            unallocated += nanos
        else:
            matched[index] = matched.get(index, 0) + nanos
    lines: dict[str, list[tuple[str, str | None, str, int]]] = {}
    for index in sorted(matched):
        rule = rules[index]
        parts, left = _split(rule, matched[index], own, teams)
        unallocated += left
        for team, nanos in parts.items():
            if nanos:
                lines.setdefault(team, []).append((rule.id, rule.tag, rule.method, nanos))
    return Allocation(lines, unallocated)


def validate_fixed(shares: Mapping[str, str]) -> None:
    """Fixed percentages: each in (0, 100], together at most 100."""
    total = Decimal(0)
    for team, raw in shares.items():
        try:
            value = Decimal(raw)
        except InvalidOperation:
            value = Decimal("NaN")
        if not value.is_finite() or not Decimal(0) < value <= 100:
            raise ValueError(f"shares: {team}: a percentage in (0, 100] is needed, not {raw!r}")
        total += value
    if total > 100:
        raise ValueError(f"shares: the percentages add up to {total}, more than 100")


#: what a team's line says of its own calls besides their cost: calls, tokens, web
#: searches, and the calls billed on an estimate with their cost (``estimated_nanos``,
#: part of the line's)
LINE_FIGURES = ("requests", "input_tokens", "output_tokens", "cache_read_tokens",
                "cache_write_tokens", "web_searches", "estimated_calls",
                "estimated_nanos")  # fmt: skip
#: figures a line carries only when not 0: they came after statements were first
#: issued, so a month without any draws the same content (and hash) as before — a
#: reissue finds nothing changed. A line with figures that lacks one had 0
SPARSE_FIGURES = ("web_searches",)

#: a line's figures as statements show them after its cost (CSV, JSONL, pages, CLI): the
#: estimated cost in decimal dollars
LINE_COLUMNS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                "web_searches", "estimated_calls", "estimated_usd")  # fmt: skip


def line_of(figures: Mapping[str, int]) -> dict[str, int]:
    """A team line's ``LINE_FIGURES`` as stored: the ``SPARSE_FIGURES`` at 0 left out."""
    return {k: v for k, v in figures.items() if v or k not in SPARSE_FIGURES}


def shown_figures(line: Mapping[str, Any]) -> dict[str, Any]:
    """A line's ``requests`` and ``LINE_COLUMNS``: None where it has none (an allocated
    or Unallocated line, a statement stored before lines carried them); a sparse figure
    a line with figures leaves out is 0."""
    shown = {name: line.get(name) for name in ("requests", *LINE_COLUMNS[:-1])}
    if shown["requests"] is not None:
        for name in SPARSE_FIGURES:
            shown[name] = line.get(name, 0)
    nanos = line.get("estimated_nanos")
    return {**shown, "estimated_usd": None if nanos is None else format_usd(nanos)}


def flatten(content: Mapping[str, Any]) -> dict[str, int]:
    """A statement's money as ``section/key -> nanos`` (what a diff compares)."""
    out: dict[str, int] = {"total": int(content["total_nanos"])}
    for section, rows in content.get("breakdown", {}).items():
        for row in rows:
            out[f"{section}/{row['id']}"] = int(row["cost_nanos"])
    for line in content.get("lines", []):
        out[f"lines/{line['id']}"] = int(line["cost_nanos"])
    return out


def line_figures(content: Mapping[str, Any]) -> dict[str, int] | None:
    """The ``LINE_FIGURES`` of a statement's lines as ``lines/key/figure -> value``; None
    for a statement stored before lines carried them (no line has any)."""
    lines = content.get("lines", [])
    if not any("requests" in line for line in lines):
        return None
    return {
        f"lines/{line['id']}/{name}": int(line[name])
        for line in lines
        for name in LINE_FIGURES
        if name in line
    }


def _differing(old: Mapping[str, int], new: Mapping[str, int]) -> Iterator[tuple[str, int, int]]:
    """``(item, before, after)`` of each item whose value differs (absent: 0), in order."""
    for item in sorted(old.keys() | new.keys()):
        a, b = old.get(item, 0), new.get(item, 0)
        if a != b:
            yield item, a, b


def diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every figure that differs between two issues, a figure absent from one being 0
    there: money as ``{item, before_nanos, after_nanos, delta_nanos}``, then the lines'
    figures (``lines/own/requests``; ``…/estimated_nanos`` is money, named so) with
    ``before``, ``after``, ``delta`` for counts. The line figures are not compared with
    an issue stored before lines carried them: unknown there, not 0."""
    changes = [
        {"item": item, "before_nanos": a, "after_nanos": b, "delta_nanos": b - a}
        for item, a, b in _differing(flatten(before), flatten(after))
    ]
    old, new = line_figures(before), line_figures(after)
    if old is None or new is None:
        return changes
    for item, a, b in _differing(old, new):
        unit = "_nanos" if item.endswith("_nanos") else ""
        changes.append({"item": item, f"before{unit}": a, f"after{unit}": b, f"delta{unit}": b - a})
    return changes
