"""``firezone-ctl``: the operator's command line for the portal's database.

Creates accounts, sites, resources, groups, policies and tokens, lists and
deletes them.  Each command is one store transaction, so a rejected command
changes nothing.  Errors are one line on stderr: exit status 2 for a malformed
command line, 1 for input the portal refuses (unknown ids, bad CIDR, bad
condition, ...).

SQLite runs synchronously without a reactor; PostgreSQL runs under
``twisted.internet.task.react``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import IO, Any, NoReturn

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from firezone.portal.store import IPortalStore, StoreError, open_store
from firezone.portal.store.errors import NotFound
from firezone.portal.store.records import AccountConfig, Actor, Group, Site
from firezone.portal.store.url import BadDatabaseURL, default_database_url, parse_database_url
from firezone.portal.tokens import (
    SECRET_KEY_FILENAME,
    IssuedToken,
    Tokens,
    load_or_create_secret_key,
)

PROG = "firezone-ctl"
DEFAULT_DATA_DIR = "var/portal"
DEFAULT_API_URL = "ws://127.0.0.1:13000/"


class UsageError(Exception):
    """The command line itself is malformed (exit status 2)."""


class CtlError(Exception):
    """The portal refuses the request (exit status 1)."""


class _Parser(argparse.ArgumentParser):
    """argparse prints the whole usage on errors; we want exactly one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


class _WallClock:
    """The edge reads the system clock once per store call; the store never does."""

    def seconds(self) -> float:
        return time.time()


@dataclasses.dataclass
class _Context:
    args: argparse.Namespace
    store: IPortalStore
    tokens: Tokens
    out: IO[str]

    def print(self, *lines: str) -> None:
        for line in lines:
            self.out.write(line + "\n")


Command = Callable[[_Context], Awaitable[None]]

# -- helpers ---------------------------------------------------------------------------


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


async def _account_id(ctx: _Context, ref: str | None = None) -> str:
    """An account named by id or slug."""
    ref = ref if ref is not None else ctx.args.account
    if ref is None:
        raise UsageError("--account is required")
    try:
        if _is_uuid(ref):
            return (await ctx.store.get_account(ref)).id
        return (await ctx.store.get_account_by_slug(ref)).id
    except NotFound:
        raise CtlError(f"no account {ref!r}") from None


def _by_id_or_name(kind: str, items: Sequence[Group | Site], ref: str) -> str:
    if _is_uuid(ref):
        return str(uuid.UUID(ref))
    matches = [item.id for item in items if item.name == ref]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise CtlError(f"no {kind} named {ref!r}")
    raise CtlError(f"more than one {kind} is named {ref!r}; use its id")


async def _actor_id(ctx: _Context, account_id: str, ref: str) -> str:
    if _is_uuid(ref):
        return str(uuid.UUID(ref))
    matches = [a.id for a in await ctx.store.list_actors(account_id) if a.email == ref.lower()]
    if not matches:
        raise CtlError(f"no actor with email {ref!r}")
    return matches[0]


def _token_lines(ctx: _Context, issued: IssuedToken, *extra: str) -> None:
    ctx.print(f"FIREZONE_TOKEN={issued.encoded}", f"FIREZONE_API_URL={ctx.args.api_url}", *extra)


def _filters(specs: Sequence[str]) -> list[dict[str, Any]]:
    """``tcp/80``, ``tcp/443,8000-8080``, ``udp/1000-2000``, ``icmp`` -> stored filters."""
    by_protocol: dict[str, list[str]] = {}
    for spec in specs:
        protocol, _, ports = spec.partition("/")
        entry = by_protocol.setdefault(protocol.strip().lower(), [])
        entry.extend(p.strip() for p in ports.split(",") if p.strip())
    return [{"protocol": p, "ports": ports} for p, ports in by_protocol.items()]


def _conditions(specs: Sequence[str]) -> list[Any]:
    conditions = []
    for spec in specs:
        try:
            conditions.append(json.loads(spec))
        except ValueError as e:
            raise UsageError(f"--condition is not JSON: {e}") from None
    return conditions


# -- commands --------------------------------------------------------------------------


async def account_create(ctx: _Context) -> None:
    a = ctx.args
    config = AccountConfig(
        search_domain=a.search_domain, upstream_do53=tuple(a.dns), upstream_doh=tuple(a.doh)
    )
    created = await ctx.store.create_account(
        a.slug, a.name, config=config, admin_email=a.admin_email, admin_name=a.admin_name
    )
    ctx.print(
        f"ACCOUNT_ID={created.account.id}",
        f"ACCOUNT_SLUG={created.account.slug}",
        f"EVERYONE_GROUP_ID={created.everyone_group.id}",
        f"EMAIL_PROVIDER_ID={created.email_provider.id}",
    )
    if created.admin is not None:
        ctx.print(f"ADMIN_ACTOR_ID={created.admin.id}")


async def site_create(ctx: _Context) -> None:
    site = await ctx.store.create_site(await _account_id(ctx), ctx.args.name)
    ctx.print(site.id)


async def gateway_token_create(ctx: _Context) -> None:
    account_id = await _account_id(ctx)
    site_id = _by_id_or_name("site", await ctx.store.list_sites(account_id), ctx.args.site)
    issued = await ctx.tokens.issue_gateway_token(account_id, site_id)
    gateway_id = ctx.args.gateway_id or hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    _token_lines(ctx, issued, f"FIREZONE_ID={gateway_id}")


async def relay_token_create(ctx: _Context) -> None:
    _token_lines(ctx, await ctx.tokens.issue_relay_token())


async def resource_create(ctx: _Context) -> None:
    a = ctx.args
    account_id = await _account_id(ctx)
    site_id = _by_id_or_name("site", await ctx.store.list_sites(account_id), a.site)
    resource = await ctx.store.create_resource(
        account_id, a.type, a.address, a.name or a.address or "Internet", site_id,
        address_description=a.description, ip_stack=a.ip_stack, filters=_filters(a.filter),
    )
    ctx.print(resource.id)


async def group_create(ctx: _Context) -> None:
    group = await ctx.store.create_group(await _account_id(ctx), ctx.args.name)
    ctx.print(group.id)


async def membership_add(ctx: _Context) -> None:
    account_id = await _account_id(ctx)
    group_id = _by_id_or_name("group", await ctx.store.list_groups(account_id),
                                    ctx.args.group)
    actor_id = await _actor_id(ctx, account_id, ctx.args.actor)
    membership = await ctx.store.add_membership(account_id, group_id, actor_id)
    ctx.print(membership.id)


async def policy_create(ctx: _Context) -> None:
    a = ctx.args
    conditions = _conditions(a.condition)
    account_id = await _account_id(ctx)
    group_id = _by_id_or_name("group", await ctx.store.list_groups(account_id), a.group)
    policy = await ctx.store.create_policy(
        account_id, group_id, a.resource, conditions=conditions, description=a.description
    )
    ctx.print(policy.id)


async def service_account_create(ctx: _Context) -> None:
    actor = await ctx.store.create_actor(await _account_id(ctx), "service_account", ctx.args.name)
    ctx.print(actor.id)


async def client_token_create(ctx: _Context) -> None:
    a = ctx.args
    account_id = await _account_id(ctx)
    actor: Actor = await ctx.store.get_actor(account_id, await _actor_id(ctx, account_id, a.actor))
    if actor.type != "service_account":
        raise CtlError("client tokens are issued here for service accounts only; users sign in")
    expires_at = None
    if a.expires_in_days is not None:
        if a.expires_in_days <= 0:
            raise UsageError("--expires-in-days must be positive")
        expires_at = time.time() + a.expires_in_days * 86400
    issued = await ctx.tokens.issue_client_token(account_id, actor.id, expires_at=expires_at)
    _token_lines(ctx, issued)


_HIDDEN = {"secret_salt", "secret_hash", "psk_base"}

#: kind -> (lister, columns); ``None`` account means relay tokens
_LISTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "accounts": ("list_accounts", ("id", "slug", "name")),
    "actors": ("list_actors", ("id", "type", "name", "email", "disabled_at")),
    "identities": ("list_identities", ("id", "actor_id", "provider_id", "provider_identifier")),
    "auth-providers": ("list_auth_providers", ("id", "type", "name", "disabled_at")),
    "groups": ("list_groups", ("id", "type", "name")),
    "memberships": ("list_memberships", ("id", "group_id", "actor_id")),
    "sites": ("list_sites", ("id", "name")),
    "resources": ("list_resources", ("id", "type", "address", "name", "site_id", "ip_stack")),
    "policies": ("list_policies", ("id", "group_id", "resource_id", "disabled_at")),
    "devices": ("list_devices", ("id", "type", "name", "ipv4", "ipv6", "last_seen_at")),
    "tokens": ("list_tokens", ("id", "type", "actor_id", "site_id", "expires_at")),
    "relay-tokens": ("list_tokens", ("id", "type", "inserted_at", "last_used_at")),
    "authorizations": (
        "list_policy_authorizations",
        ("id", "policy_id", "initiating_device_id", "receiving_device_id", "expires_at"),
    ),
}

_DELETES: dict[str, str] = {
    "account": "delete_account",
    "actor": "delete_actor",
    "identity": "delete_identity",
    "auth-provider": "delete_auth_provider",
    "group": "delete_group",
    "membership": "delete_membership",
    "site": "delete_site",
    "resource": "delete_resource",
    "policy": "delete_policy",
    "device": "delete_device",
    "token": "delete_token",
    "relay-token": "delete_token",
    "authorization": "delete_policy_authorization",
}


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


async def list_kind(ctx: _Context) -> None:
    kind = ctx.args.kind
    method, columns = _LISTS[kind]
    lister = getattr(ctx.store, method)
    if kind == "accounts":
        rows = await lister()
    elif kind == "relay-tokens":
        rows = await lister(None)
    else:
        rows = await lister(await _account_id(ctx))
    if ctx.args.json:
        ctx.print(json.dumps([
            {k: v for k, v in dataclasses.asdict(r).items() if k not in _HIDDEN} for r in rows
        ], default=str))
        return
    ctx.print("\t".join(columns))
    for r in rows:
        ctx.print("\t".join(_cell(getattr(r, c)) for c in columns))


async def delete_kind(ctx: _Context) -> None:
    kind, ident = ctx.args.kind, ctx.args.id
    method = getattr(ctx.store, _DELETES[kind])
    if kind == "account":
        await method(await _account_id(ctx, ident))
    elif kind == "relay-token":
        await method(None, ident)
    else:
        await method(await _account_id(ctx), ident)
    ctx.print(f"deleted {kind} {ident}")


async def revoke_token(ctx: _Context) -> None:
    account_id = None if ctx.args.account is None else await _account_id(ctx)
    await ctx.tokens.revoke(account_id, ctx.args.id)
    ctx.print(f"revoked token {ctx.args.id}")


# -- command line ----------------------------------------------------------------------


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    data_dir = environ.get("FIREZONE_DATA_DIR", DEFAULT_DATA_DIR)
    p = _Parser(prog=PROG, description="Manage the Firezone portal's accounts and tokens.")
    p.add_argument("--data-dir", default=data_dir,
                   help="portal data directory (FIREZONE_DATA_DIR; default %(default)s)")
    p.add_argument("--database", default=environ.get("DATABASE_URL"),
                   help="sqlite:///PATH or postgresql://... (DATABASE_URL; default "
                        "sqlite:///<data-dir>/portal.db)")
    p.add_argument("--secret-key-file", default=None,
                   help="token signing key, created if missing (default <data-dir>/secret_key)")
    p.add_argument("--api-url", default=environ.get("FIREZONE_API_URL", DEFAULT_API_URL),
                   help="URL printed as FIREZONE_API_URL (default %(default)s)")
    top = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def group(name: str, help: str) -> Any:
        sub = top.add_parser(name, help=help)
        return sub.add_subparsers(dest="action", required=True, parser_class=_Parser)

    def account_opt(parser: argparse.ArgumentParser, required: bool = True) -> None:
        parser.add_argument("--account", required=required, help="account id or slug")

    sub = group("account", "accounts").add_parser("create", help="create an account")
    sub.add_argument("--slug", required=True)
    sub.add_argument("--name", required=True)
    sub.add_argument("--admin-email", help="also create the first admin with this email")
    sub.add_argument("--admin-name")
    sub.add_argument("--search-domain")
    sub.add_argument("--dns", action="append", default=[], help="upstream DNS server IP")
    sub.add_argument("--doh", action="append", default=[], help="upstream DoH https:// URL")
    sub.set_defaults(run=account_create)

    sub = group("site", "sites").add_parser("create", help="create a site")
    account_opt(sub)
    sub.add_argument("--name", required=True)
    sub.set_defaults(run=site_create)

    sub = group("gateway-token", "gateway tokens").add_parser(
        "create", help="issue a site's gateway token and print the gateway's env")
    account_opt(sub)
    sub.add_argument("--site", required=True, help="site id or name")
    sub.add_argument("--gateway-id", help="FIREZONE_ID to print (default: random)")
    sub.set_defaults(run=gateway_token_create)

    sub = group("relay-token", "relay tokens").add_parser("create", help="issue a relay token")
    sub.set_defaults(run=relay_token_create)

    sub = group("resource", "resources").add_parser("create", help="create a resource")
    account_opt(sub)
    sub.add_argument("--type", required=True, choices=("cidr", "ip", "dns", "internet"))
    sub.add_argument("--address", help="CIDR, IP or DNS pattern (none for internet)")
    sub.add_argument("--site", required=True, help="site id or name")
    sub.add_argument("--name", help="default: the address")
    sub.add_argument("--description", help="address description shown to users")
    sub.add_argument("--ip-stack", choices=("dual", "ipv4_only", "ipv6_only"))
    sub.add_argument("--filter", action="append", default=[],
                     help="PROTO[/PORTS], e.g. tcp/80, udp/1000-2000, icmp (repeatable)")
    sub.set_defaults(run=resource_create)

    sub = group("group", "groups").add_parser("create", help="create a static group")
    account_opt(sub)
    sub.add_argument("--name", required=True)
    sub.set_defaults(run=group_create)

    sub = group("membership", "memberships").add_parser("add", help="add an actor to a group")
    account_opt(sub)
    sub.add_argument("--group", required=True, help="group id or name")
    sub.add_argument("--actor", required=True, help="actor id or email")
    sub.set_defaults(run=membership_add)

    sub = group("policy", "policies").add_parser("create", help="grant a group a resource")
    account_opt(sub)
    sub.add_argument("--group", required=True, help="group id or name")
    sub.add_argument("--resource", required=True, help="resource id")
    sub.add_argument("--condition", action="append", default=[],
                     help='JSON {"property", "operator", "values"} (repeatable)')
    sub.add_argument("--description")
    sub.set_defaults(run=policy_create)

    sub = group("service-account", "service accounts").add_parser(
        "create", help="create a service account")
    account_opt(sub)
    sub.add_argument("--name", required=True)
    sub.set_defaults(run=service_account_create)

    sub = group("client-token", "client tokens").add_parser(
        "create", help="issue a service account's client token")
    account_opt(sub)
    sub.add_argument("--actor", required=True, help="service account id")
    sub.add_argument("--expires-in-days", type=float, help="default: 7 days")
    sub.set_defaults(run=client_token_create)

    sub = top.add_parser("list", help="list rows of one kind")
    sub.add_argument("kind", choices=sorted(_LISTS))
    sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
    account_opt(sub, required=False)
    sub.set_defaults(run=list_kind)

    sub = group("revoke", "revoke tokens").add_parser("token", help="revoke (delete) a token")
    sub.add_argument("id")
    account_opt(sub, required=False)
    sub.set_defaults(run=revoke_token)

    sub = top.add_parser("delete", help="delete one row (and what hangs off it)")
    sub.add_argument("kind", choices=sorted(_DELETES))
    sub.add_argument("id")
    account_opt(sub, required=False)
    sub.set_defaults(run=delete_kind)
    return p


async def _run(args: argparse.Namespace, store: IPortalStore, out: IO[str]) -> None:
    key_file = args.secret_key_file or os.path.join(args.data_dir, SECRET_KEY_FILENAME)
    os.makedirs(os.path.dirname(os.path.abspath(key_file)), exist_ok=True)
    tokens = Tokens(store, load_or_create_secret_key(key_file), _WallClock())
    command: Command = args.run
    await command(_Context(args, store, tokens, out))


async def _session(args: argparse.Namespace, reactor: Any, out: IO[str]) -> None:
    store = await open_store(args.database, _WallClock(), reactor)
    try:
        await _run(args, store, out)
    finally:
        await store.close()


def _outcome(result: object, err: IO[str]) -> int:
    if not isinstance(result, Failure):
        return 0
    if result.check(UsageError):
        err.write(f"{PROG}: error: {result.value}\n")
        return 2
    if result.check(CtlError, StoreError, ValueError, OSError):
        err.write(f"{PROG}: error: {result.value}\n")
        return 1
    result.raiseException()
    raise AssertionError("unreachable")


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run one command; returns the exit status (the console script exits with it)."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    env = os.environ if environ is None else environ
    try:
        args = build_parser(env).parse_args(sys.argv[1:] if argv is None else list(argv))
        if args.database is None:
            args.database = default_database_url(args.data_dir)
        kind = parse_database_url(args.database).kind
    except UsageError as e:
        err.write(f"{PROG}: error: {e}\n")
        return 2
    except BadDatabaseURL as e:
        err.write(f"{PROG}: error: --database: {e}\n")
        return 2
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0

    if kind == "sqlite":
        results: list[object] = []
        Deferred.fromCoroutine(_session(args, None, out)).addBoth(results.append)
        if not results:
            raise RuntimeError("the SQLite store did not complete synchronously")
        return _outcome(results[0], err)

    from twisted.internet import task

    def run_reactor(reactor: Any) -> Deferred[None]:
        def finish(result: object) -> None:
            code = _outcome(result, err)
            if code:
                raise SystemExit(code)

        return Deferred.fromCoroutine(_session(args, reactor, out)).addBoth(finish)

    try:
        task.react(run_reactor)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0
