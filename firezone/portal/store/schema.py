"""Versioned schema migrations, one list per SQL dialect.

Both lists describe the same tables with the same column names; PostgreSQL
uses its native types (``uuid``, ``jsonb``, ``inet``, ``bytea``), SQLite plain
``TEXT``/``REAL``/``BLOB``.  Every table has ``account_id`` and a composite
primary key ``(account_id, id)``; every reference between account-owned rows is
a composite foreign key ``(account_id, x_id)``, so the database itself refuses
a row of account A that points at a row of account B.

Append new migrations with the next version number to *both* lists; never edit
a released one.
"""

from __future__ import annotations

from dataclasses import dataclass

from firezone.portal.store.errors import SchemaTooNew
from firezone.portal.store.program import Program, Query


@dataclass(frozen=True)
class Migration:
    version: int
    statements: tuple[str, ...]


def _v1(
    *, uuid: str, json: str, ts: str, blob: str, inet: str, dflt_obj: str, dflt_list: str
) -> tuple[str, ...]:
    """Version 1: the whole initial model, written once for both dialects."""
    return (
        f"""CREATE TABLE accounts (
            id {uuid} PRIMARY KEY,
            slug TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            config {json} NOT NULL DEFAULT {dflt_obj},
            inserted_at {ts} NOT NULL,
            updated_at {ts} NOT NULL
        )""",
        f"""CREATE TABLE actors (
            account_id {uuid} NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
            id {uuid} NOT NULL,
            type TEXT NOT NULL
                CHECK (type IN ('account_user', 'account_admin_user', 'service_account')),
            name TEXT NOT NULL,
            email TEXT,
            disabled_at {ts},
            inserted_at {ts} NOT NULL,
            updated_at {ts} NOT NULL,
            PRIMARY KEY (account_id, id)
        )""",
        "CREATE UNIQUE INDEX actors_account_email ON actors (account_id, email)"
        " WHERE email IS NOT NULL",
        f"""CREATE TABLE auth_providers (
            account_id {uuid} NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
            id {uuid} NOT NULL,
            type TEXT NOT NULL CHECK (type IN ('email_otp', 'oidc')),
            name TEXT NOT NULL,
            config {json} NOT NULL DEFAULT {dflt_obj},
            disabled_at {ts},
            inserted_at {ts} NOT NULL,
            updated_at {ts} NOT NULL,
            PRIMARY KEY (account_id, id)
        )""",
        f"""CREATE TABLE identities (
            account_id {uuid} NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
            id {uuid} NOT NULL,
            actor_id {uuid} NOT NULL,
            provider_id {uuid} NOT NULL,
            provider_identifier TEXT NOT NULL,
            email TEXT,
            inserted_at {ts} NOT NULL,
            PRIMARY KEY (account_id, id),
            UNIQUE (account_id, provider_id, provider_identifier),
            FOREIGN KEY (account_id, actor_id)
                REFERENCES actors (account_id, id) ON DELETE CASCADE,
            FOREIGN KEY (account_id, provider_id)
                REFERENCES auth_providers (account_id, id) ON DELETE CASCADE
        )""",
        "CREATE INDEX identities_actor ON identities (account_id, actor_id)",
        f"""CREATE TABLE groups (
            account_id {uuid} NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
            id {uuid} NOT NULL,
            name TEXT NOT NULL,
            type TEXT NOT NULL CHECK (type IN ('managed', 'static')),
            inserted_at {ts} NOT NULL,
            updated_at {ts} NOT NULL,
            PRIMARY KEY (account_id, id)
        )""",
        "CREATE UNIQUE INDEX groups_one_managed ON groups (account_id) WHERE type = 'managed'",
        f"""CREATE TABLE memberships (
            account_id {uuid} NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
            id {uuid} NOT NULL,
            group_id {uuid} NOT NULL,
            actor_id {uuid} NOT NULL,
            inserted_at {ts} NOT NULL,
            PRIMARY KEY (account_id, id),
            UNIQUE (account_id, group_id, actor_id),
            FOREIGN KEY (account_id, group_id)
                REFERENCES groups (account_id, id) ON DELETE CASCADE,
            FOREIGN KEY (account_id, actor_id)
                REFERENCES actors (account_id, id) ON DELETE CASCADE
        )""",
        "CREATE INDEX memberships_actor ON memberships (account_id, actor_id)",
        f"""CREATE TABLE sites (
            account_id {uuid} NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
            id {uuid} NOT NULL,
            name TEXT NOT NULL,
            inserted_at {ts} NOT NULL,
            updated_at {ts} NOT NULL,
            PRIMARY KEY (account_id, id),
            UNIQUE (account_id, name)
        )""",
        f"""CREATE TABLE resources (
            account_id {uuid} NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
            id {uuid} NOT NULL,
            site_id {uuid} NOT NULL,
            type TEXT NOT NULL CHECK (type IN ('cidr', 'ip', 'dns', 'internet')),
            address TEXT,
            address_description TEXT,
            name TEXT NOT NULL,
            ip_stack TEXT CHECK (ip_stack IN ('dual', 'ipv4_only', 'ipv6_only')),
            filters {json} NOT NULL DEFAULT {dflt_list},
            inserted_at {ts} NOT NULL,
            updated_at {ts} NOT NULL,
            PRIMARY KEY (account_id, id),
            CHECK ((type = 'internet') = (address IS NULL)),
            FOREIGN KEY (account_id, site_id)
                REFERENCES sites (account_id, id) ON DELETE CASCADE
        )""",
        "CREATE INDEX resources_site ON resources (account_id, site_id)",
        "CREATE UNIQUE INDEX resources_one_internet ON resources (account_id)"
        " WHERE type = 'internet'",
        f"""CREATE TABLE policies (
            account_id {uuid} NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
            id {uuid} NOT NULL,
            group_id {uuid} NOT NULL,
            resource_id {uuid} NOT NULL,
            conditions {json} NOT NULL DEFAULT {dflt_list},
            description TEXT,
            disabled_at {ts},
            inserted_at {ts} NOT NULL,
            updated_at {ts} NOT NULL,
            PRIMARY KEY (account_id, id),
            UNIQUE (account_id, group_id, resource_id),
            FOREIGN KEY (account_id, group_id)
                REFERENCES groups (account_id, id) ON DELETE CASCADE,
            FOREIGN KEY (account_id, resource_id)
                REFERENCES resources (account_id, id) ON DELETE CASCADE
        )""",
        "CREATE INDEX policies_resource ON policies (account_id, resource_id)",
        f"""CREATE TABLE devices (
            account_id {uuid} NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
            id {uuid} NOT NULL,
            type TEXT NOT NULL CHECK (type IN ('client', 'gateway')),
            external_id TEXT NOT NULL,
            name TEXT NOT NULL,
            public_key TEXT NOT NULL,
            psk_base {blob} NOT NULL,
            ipv4 {inet} NOT NULL,
            ipv6 {inet} NOT NULL,
            actor_id {uuid},
            site_id {uuid},
            last_seen_remote_ip {inet},
            last_seen_user_agent TEXT,
            last_seen_version TEXT,
            last_seen_at {ts},
            verified_at {ts},
            inserted_at {ts} NOT NULL,
            updated_at {ts} NOT NULL,
            PRIMARY KEY (account_id, id),
            UNIQUE (account_id, type, external_id),
            UNIQUE (account_id, ipv4),
            UNIQUE (account_id, ipv6),
            CHECK ((type = 'client' AND actor_id IS NOT NULL AND site_id IS NULL)
                OR (type = 'gateway' AND site_id IS NOT NULL AND actor_id IS NULL)),
            FOREIGN KEY (account_id, actor_id)
                REFERENCES actors (account_id, id) ON DELETE CASCADE,
            FOREIGN KEY (account_id, site_id)
                REFERENCES sites (account_id, id) ON DELETE CASCADE
        )""",
        "CREATE INDEX devices_actor ON devices (account_id, actor_id)",
        "CREATE INDEX devices_site ON devices (account_id, site_id)",
        f"""CREATE TABLE tokens (
            id {uuid} PRIMARY KEY,
            account_id {uuid} REFERENCES accounts (id) ON DELETE CASCADE,
            type TEXT NOT NULL CHECK (type IN ('client', 'gateway', 'relay', 'api')),
            actor_id {uuid},
            auth_provider_id {uuid},
            site_id {uuid},
            name TEXT,
            secret_salt TEXT NOT NULL,
            secret_hash TEXT NOT NULL,
            expires_at {ts},
            last_used_at {ts},
            last_used_remote_ip {inet},
            inserted_at {ts} NOT NULL,
            UNIQUE (account_id, id),
            CHECK ((type = 'relay') = (account_id IS NULL)),
            CHECK (type NOT IN ('client', 'api') OR actor_id IS NOT NULL),
            CHECK (type <> 'gateway' OR site_id IS NOT NULL),
            FOREIGN KEY (account_id, actor_id)
                REFERENCES actors (account_id, id) ON DELETE CASCADE,
            FOREIGN KEY (account_id, auth_provider_id)
                REFERENCES auth_providers (account_id, id) ON DELETE CASCADE,
            FOREIGN KEY (account_id, site_id)
                REFERENCES sites (account_id, id) ON DELETE CASCADE
        )""",
        "CREATE INDEX tokens_account ON tokens (account_id, type)",
        "CREATE INDEX tokens_expires ON tokens (expires_at)",
        f"""CREATE TABLE policy_authorizations (
            account_id {uuid} NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
            id {uuid} NOT NULL,
            token_id {uuid} NOT NULL,
            policy_id {uuid} NOT NULL,
            initiating_device_id {uuid} NOT NULL,
            receiving_device_id {uuid} NOT NULL,
            resource_id {uuid} NOT NULL,
            membership_id {uuid},
            initiator_remote_ip {inet},
            initiator_user_agent TEXT,
            receiver_remote_ip {inet},
            expires_at {ts},
            inserted_at {ts} NOT NULL,
            PRIMARY KEY (account_id, id),
            FOREIGN KEY (account_id, token_id)
                REFERENCES tokens (account_id, id) ON DELETE CASCADE,
            FOREIGN KEY (account_id, policy_id)
                REFERENCES policies (account_id, id) ON DELETE CASCADE,
            FOREIGN KEY (account_id, initiating_device_id)
                REFERENCES devices (account_id, id) ON DELETE CASCADE,
            FOREIGN KEY (account_id, receiving_device_id)
                REFERENCES devices (account_id, id) ON DELETE CASCADE,
            FOREIGN KEY (account_id, resource_id)
                REFERENCES resources (account_id, id) ON DELETE CASCADE,
            FOREIGN KEY (account_id, membership_id)
                REFERENCES memberships (account_id, id) ON DELETE CASCADE
        )""",
        "CREATE INDEX policy_authorizations_expires ON policy_authorizations (expires_at)",
        "CREATE INDEX policy_authorizations_initiator"
        " ON policy_authorizations (account_id, initiating_device_id)",
        "CREATE INDEX policy_authorizations_receiver"
        " ON policy_authorizations (account_id, receiving_device_id)",
    )


SQLITE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        _v1(
            uuid="TEXT", json="TEXT", ts="REAL", blob="BLOB", inet="TEXT",
            dflt_obj="'{}'", dflt_list="'[]'",
        ),
    ),
)

POSTGRES_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        _v1(
            uuid="uuid", json="jsonb", ts="double precision", blob="bytea", inet="inet",
            dflt_obj="'{}'::jsonb", dflt_list="'[]'::jsonb",
        ),
    ),
)

LATEST_VERSION = SQLITE_MIGRATIONS[-1].version
assert LATEST_VERSION == POSTGRES_MIGRATIONS[-1].version


#: arbitrary key of the advisory lock that serialises migrations across portal nodes
MIGRATION_LOCK_KEY = 0x46_5A_53_43  # "FZSC"


def migrate(migrations: tuple[Migration, ...], now: float) -> Program[int]:
    """Bring the database to the newest known version, in one transaction.

    Refuses (``SchemaTooNew``) a database whose version is newer than any
    migration this release knows, before touching anything.
    """
    yield Query("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK_KEY,), dialect="postgresql")
    yield Query(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
    )
    current = yield from current_version()
    latest = migrations[-1].version
    if current > latest:
        raise SchemaTooNew(current, latest)
    for migration in migrations:
        if migration.version <= current:
            continue
        for statement in migration.statements:
            yield Query(statement)
        yield Query(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
            (migration.version, now),
        )
    return latest


def current_version() -> Program[int]:
    rows = yield Query("SELECT MAX(version) AS version FROM schema_migrations")
    return int(rows[0]["version"] or 0)
