"""Slack incoming-webhook URLs encrypted at rest.

Revision ID: 0008
Revises: 0007

A Slack URL is itself the credential: from this revision ``webhook_endpoints.url`` holds
only its masked form for ``kind = 'slack'`` and ``url_encrypted`` the Fernet token of the
real URL (``spendgate.webhooks.secrets_box``). The encryption key lives in the
environment, not in migrations, so Slack rows written before this revision are sealed by
the running gateway (``WebhookRuntime.maintain``, at start and every minute after) or by
``spendgate webhooks reencrypt``; until then the worker reads their plaintext ``url``
and the API shows it masked.

Downgrading writes the real URLs back into ``url``, which needs the key
(``SPENDGATE_SECRET_KEY`` or ``SPENDGATE_MASTER_KEY``) when sealed rows exist.
"""

import os

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("webhook_endpoints", sa.Column("url_encrypted", sa.Text(), nullable=True))


def downgrade() -> None:
    endpoints = sa.table(
        "webhook_endpoints",
        sa.column("id", sa.String()),
        sa.column("url", sa.String()),
        sa.column("url_encrypted", sa.Text()),
    )
    conn = op.get_bind()
    sealed = conn.execute(
        sa.select(endpoints.c.id, endpoints.c.url_encrypted).where(
            endpoints.c.url_encrypted.is_not(None)
        )
    ).all()
    if sealed:
        from spendgate.webhooks.secrets_box import SecretBox

        box = SecretBox.from_env(os.environ)
        for endpoint_id, token in sealed:
            conn.execute(
                endpoints.update()
                .where(endpoints.c.id == endpoint_id)
                .values(url=box.decrypt(token))
            )
    op.drop_column("webhook_endpoints", "url_encrypted")
