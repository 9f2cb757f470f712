"""What a wallet paid: the one rule, over any run of consecutive time spans.

A wallet pays for the calls of its scope from when it opened until it closed, except
those a cost ticket's grant paid for. A grant pays for its requester key's calls while
it lasts, first calls first, until its amount is used up. So over spans ``0..n``, a
wallet paid its scope's spend in each span less what each grant paid in it, and a grant
paid in a span what its key spent there, at most what was left of the grant at the
span's start (its amount less what the key spent in the grant's window before).

``PolicyStore.wallet_spend`` (one span: the balance, seeds, reconciliation) and
``PolicyStore.wallet_history`` (one span a day: the wallet page) both end here; the
store only sums the ledger per span.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GrantSpend:
    """One grant's key's spend inside the grant's window, in nano-dollars."""

    granted: int
    #: before the first span
    before: int
    #: in each span
    spent: Sequence[int]


def grant_paid(grant: GrantSpend) -> list[int]:
    """What the grant paid in each span: its key's first calls, up to its amount."""
    left = max(0, grant.granted - grant.before)
    out = []
    for spent in grant.spent:
        paid = min(spent, left)
        left -= paid
        out.append(paid)
    return out


def wallet_paid(scope_spent: Sequence[int], grants: Iterable[GrantSpend]) -> list[int]:
    """What the wallet paid in each span: its scope's spend less what its grants paid."""
    out = list(scope_spent)
    for grant in grants:
        for i, paid in enumerate(grant_paid(grant)):
            out[i] -= paid
    return out
