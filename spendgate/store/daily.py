"""The daily narrow rollup's zones: which local days an org's ``usage_team_daily`` rows
are drawn in, and how they move when the org's reporting zone changes.

``usage_daily_zone`` holds one row per org that has rollup rows: the zone of its daily
rows. The ledger writer folds each batch's narrow rows into local days of that zone
(``rollups.daily``), in the batch's transaction, after :func:`lock_zones`; a change of
the org's reporting zone calls :func:`set_daily_zone` in the change's transaction, which
refolds the org's daily rows from ``usage_team_rollup`` in the new zone (set-based).

**Ordering.** A batch never writes daily rows under a zone that is no longer the org's:

- PostgreSQL: the batch reads its orgs' zone rows ``FOR SHARE`` before it writes any
  rollup row; a zone change takes the org's zone row ``FOR UPDATE`` before it reads the
  narrow rows. Whichever comes second waits for the first to commit. A batch that went
  first has committed its narrow rows by the time the change reads them (READ COMMITTED:
  each statement sees what committed before it began), so the refold counts them in the
  new zone; a batch that waited reads the new zone and writes its own rows in it.
- SQLite: one writer at a time; the batch reads the zones after its ledger insert has
  taken the database's write lock, and a zone change holds that lock from its first
  write (``UPDATE orgs``) on.

An org seen by the writer with no zone row yet gets one (its reporting zone, or UTC for
an org the directory does not know), and its daily rows are folded from whatever narrow
rows it already has — so daily rows exist for exactly the orgs with a zone row, and an
org with narrow rows always has one (migration 0020 filled it for the orgs before it).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from spendgate.core import showback as sb
from spendgate.store import rollups, schema
from spendgate.store.database import insert_new

DEFAULT_ZONE = "UTC"


async def _zones(conn: AsyncConnection, org_ids: Sequence[str], lock: bool) -> dict[str, str]:
    z = rollups.usage_daily_zone
    query = sa.select(z.c.org_id, z.c.timezone).where(z.c.org_id.in_(org_ids))
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update(read=True)
    return {org: zone for org, zone in (await conn.execute(query)).all()}


async def reporting_zone(conn: AsyncConnection, org_id: str) -> str:
    orgs = schema.orgs
    query = sa.select(orgs.c.reporting_timezone).where(orgs.c.id == org_id)
    return str((await conn.execute(query)).scalar() or DEFAULT_ZONE)


async def lock_zones(conn: AsyncConnection, org_ids: Sequence[str]) -> dict[str, str]:
    """Each org's daily zone, its row locked against a change (shared) until the
    caller's transaction ends; an org without one gets one (and its daily rows)."""
    org_ids = sorted(set(org_ids))
    found = await _zones(conn, org_ids, lock=True)
    missing = [o for o in org_ids if o not in found]
    for org in missing:
        zone = await reporting_zone(conn, org)
        if await insert_new(
            conn, rollups.usage_daily_zone, {"org_id": org, "timezone": zone}, ["org_id"]
        ):
            await refold(conn, org, zone)
    if missing:
        found.update(await _zones(conn, missing, lock=True))
    return found


async def set_daily_zone(conn: AsyncConnection, org_id: str, zone: str) -> bool:
    """Put ``org_id``'s daily rows in ``zone`` (its new reporting zone), in the caller's
    transaction: the zone row locked (exclusive), then the rows refolded from the narrow
    rollup. False when they were in ``zone`` already."""
    z = rollups.usage_daily_zone
    query = sa.select(z.c.timezone).where(z.c.org_id == org_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    current = (await conn.execute(query)).scalar()
    new = {"org_id": org_id, "timezone": zone}
    if current is None and not await insert_new(conn, z, new, ["org_id"]):
        current = (await conn.execute(query)).scalar()  # a writer made it meanwhile
    if current == zone:
        return False
    if current is not None:
        await conn.execute(z.update().where(z.c.org_id == org_id).values(timezone=zone))
    await refold(conn, org_id, zone)
    return True


async def refold(conn: AsyncConnection, org_id: str, zone: str) -> None:
    """Replace ``org_id``'s daily rows by its narrow rows folded into local days of
    ``zone`` (one ``INSERT … SELECT … GROUP BY``)."""
    n, d = rollups.usage_team_rollup, rollups.usage_team_daily
    await conn.execute(d.delete().where(d.c.org_id == org_id))
    span = sa.select(sa.func.min(n.c.bucket), sa.func.max(n.c.bucket)).where(n.c.org_id == org_id)
    low, high = (await conn.execute(span)).one()
    if low is None:
        return
    segments = sb.offset_segments(int(low), int(high) + 1, zone)
    await conn.execute(rollups.fold_daily(segments, n.c.org_id == org_id))
