"""``Principal.sees`` for changes that bind calls (``BINDING``): on an object of several
teams (a user of T1 and T2) a team role needs the permission in every one of them; reads
and other changes need one shared team, as before. Pure: no app, no database."""

from __future__ import annotations

import pytest

from spendgate.core.access import (
    BINDING,
    GRANTS,
    MASTER_PRINCIPAL,
    TEAM_ADMIN,
    Can,
    Owner,
    Principal,
)

ORG = "org_a"
SHARED = Owner.of(ORG, "t1", "t2")  # a user of both teams
T1_ONLY = Owner.of(ORG, "t1")

ADMIN_OF_T1 = Principal.of("member", ORG, {"t1": "team_admin"}, user_id="u1")
ADMIN_OF_T1_VIEWER_OF_T2 = Principal.of(
    "member", ORG, {"t1": "team_admin", "t2": "viewer"}, user_id="u2"
)
ADMIN_OF_BOTH = Principal.of("member", ORG, {"t1": "team_admin", "t2": "team_admin"})
ORG_ADMIN = Principal.of("org_admin", ORG, {})


#: the binding changes a team role may make at all (wallets: org roles only)
TEAM_BINDING = sorted(p for p in BINDING if TEAM_ADMIN in GRANTS[p])


@pytest.mark.parametrize("permission", TEAM_BINDING)
def test_a_binding_change_needs_every_team_of_the_object(permission: Can) -> None:
    """Refused to an admin of one of the teams (a viewer role in the other adds nothing),
    who is told it reads the object (``binds_part_of``); granted to whoever holds the
    permission in both teams or org-wide, and for an object of T1 alone."""
    for partial in (ADMIN_OF_T1, ADMIN_OF_T1_VIEWER_OF_T2):
        narrowed = partial.acting_for(permission)
        assert not partial.can(permission, SHARED)
        assert narrowed.binds_part_of(SHARED)
        assert partial.can(permission, T1_ONLY)
        assert not narrowed.binds_part_of(T1_ONLY)
    for whole in (ADMIN_OF_BOTH, ORG_ADMIN, MASTER_PRINCIPAL):
        assert whole.can(permission, SHARED)
        assert not whole.acting_for(permission).binds_part_of(SHARED)


@pytest.mark.parametrize(
    "permission", [Can.BUDGETS_READ, Can.LIMITS_READ, Can.KEYS_WRITE, Can.USERS_WRITE]
)
def test_reads_and_other_changes_need_one_shared_team(permission: Can) -> None:
    """Reading (and changes that bind no calls, users themselves included) stays as it
    was: one team in common is enough."""
    assert ADMIN_OF_T1.can(permission, SHARED)
    assert not ADMIN_OF_T1.acting_for(permission).binds_part_of(SHARED)


def test_objects_out_of_reach_stay_out_of_sight() -> None:
    """No team in common, another org, an org-wide object: nothing to read, so the
    binding change is the plain 404 of an unseen object, not the 403 explaining it."""
    narrowed = ADMIN_OF_T1.acting_for(Can.BUDGETS_WRITE)
    for owner in (Owner.of(ORG, "t2", "t3"), Owner.of("org_b", "t1", "t2"), Owner.of(ORG)):
        assert not narrowed.sees(owner)
        assert not narrowed.binds_part_of(owner)


def test_whoever_may_make_a_binding_change_reads_its_object() -> None:
    """``binds_part_of`` answers 403 (not 404) on the grounds that the caller reads the
    object: every role holding a binding permission holds the matching read."""
    reads = {
        Can.BUDGETS_WRITE: Can.BUDGETS_READ,
        Can.WALLETS_WRITE: Can.WALLETS_READ,
        Can.LIMITS_WRITE: Can.LIMITS_READ,
        Can.ANOMALY_ACTIONS_WRITE: Can.ANOMALIES_READ,
    }
    assert reads.keys() == BINDING
    for write, read in reads.items():
        assert GRANTS[write] <= GRANTS[read]
