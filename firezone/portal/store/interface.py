"""The portal store's contract, whatever database is behind it.

Every method returns a ``Deferred``.  Failures are the store's own errors
(:mod:`firezone.portal.store.errors`): ``NotFound``, ``Conflict``,
``InvalidRecord``.  Ids are UUID strings, times unix seconds taken from the
store's injected clock.

Scoping rule: every method that reads or writes account-owned rows takes the
``account_id`` first and only ever touches rows of that account; an id from
another account is ``NotFound``, exactly like a missing one.  The only
unscoped methods are the operator's ``list_accounts``, the sweeps
(``delete_expired_*``, which take no ids) and relay tokens, which belong to no
account and are reached with ``account_id=None``.

Notifications: every write announces ``{"op", "table", "account_id", "id"}``
(JSON) on the ``changes`` channel, and every deleted token -- also one deleted
because its actor, site, provider or account went, or its actor or provider
was disabled -- announces its id on ``token_deleted``.  Notifications are sent
when the transaction commits; rows removed by a database cascade (e.g. the
policies of a deleted resource) are not announced one by one.

Annotate consumers with ``IPortalStore``: mypy treats ``@implementer`` as
subclassing, and the tests check every backend with ``verifyObject``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import Interface

from firezone.portal.store.program import UNCHANGED
from firezone.portal.store.records import (
    Account,
    AccountConfig,
    Actor,
    AuthProvider,
    CreatedAccount,
    Device,
    Group,
    Identity,
    Membership,
    Policy,
    PolicyAuthorization,
    PolicyGrant,
    Resource,
    Site,
    Token,
)

NotifyCallback = Callable[[str], object]
Filters = Iterable[Mapping[str, Any]]
Conditions = Iterable[Mapping[str, Any]]


class IPortalStore(Interface):
    # -- lifecycle and notifications ---------------------------------------------------
    def schema_version() -> Deferred[int]:
        """The schema version the database is at."""

    def close() -> Deferred[None]:
        """Release the connections; later calls fail with ``StoreError``."""

    def listen(channel: str, callback: NotifyCallback) -> Deferred[None]:
        """Call ``callback(payload)`` for each notification on ``channel``.

        In-process for SQLite; PostgreSQL ``LISTEN`` (every portal node sharing
        the database hears it).
        """

    def unlisten(channel: str, callback: NotifyCallback) -> Deferred[None]:
        """Stop calling ``callback`` for ``channel``."""

    def notify(channel: str, payload: str) -> Deferred[None]:
        """Send ``payload`` to every listener of ``channel`` (on all nodes)."""

    # -- accounts ----------------------------------------------------------------------
    def create_account(
        slug: str,
        name: str,
        config: AccountConfig | None = None,
        admin_email: str | None = None,
        admin_name: str | None = None,
    ) -> Deferred[CreatedAccount]:
        """The account, its managed Everyone group and an ``email_otp`` provider,
        plus (with ``admin_email``) an ``account_admin_user`` and its email
        identity -- all in one transaction."""

    def get_account(account_id: str) -> Deferred[Account]:
        """One account by id."""

    def get_account_by_slug(slug: str) -> Deferred[Account]:
        """One account by slug."""

    def list_accounts() -> Deferred[list[Account]]:
        """Every account (operator view)."""

    def update_account(
        account_id: str, name: str | None = None, config: AccountConfig | None = None
    ) -> Deferred[Account]:
        """Change the name and/or the DNS config."""

    def delete_account(account_id: str) -> Deferred[None]:
        """The account and everything in it."""

    # -- actors ------------------------------------------------------------------------
    def create_actor(
        account_id: str, type: str, name: str, email: str | None = None
    ) -> Deferred[Actor]:
        """``type``: account_user, account_admin_user or service_account."""

    def get_actor(account_id: str, actor_id: str) -> Deferred[Actor]:
        """One actor."""

    def list_actors(account_id: str) -> Deferred[list[Actor]]:
        """The account's actors."""

    def set_actor_disabled(account_id: str, actor_id: str, disabled: bool) -> Deferred[Actor]:
        """Disabling also deletes the actor's client and API tokens."""

    def delete_actor(account_id: str, actor_id: str) -> Deferred[None]:
        """With its identities, memberships, tokens and client devices."""

    # -- auth providers ----------------------------------------------------------------
    def create_auth_provider(
        account_id: str, type: str, name: str, config: Mapping[str, Any] | None = None
    ) -> Deferred[AuthProvider]:
        """``type``: email_otp or oidc; ``config`` a JSON object whose
        ``client_session_lifetime_secs`` defaults to 7 days."""

    def get_auth_provider(account_id: str, provider_id: str) -> Deferred[AuthProvider]:
        """One provider."""

    def list_auth_providers(account_id: str) -> Deferred[list[AuthProvider]]:
        """The account's providers."""

    def update_auth_provider(
        account_id: str,
        provider_id: str,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> Deferred[AuthProvider]:
        """Change the name and/or replace the config."""

    def set_auth_provider_disabled(
        account_id: str, provider_id: str, disabled: bool
    ) -> Deferred[AuthProvider]:
        """Disabling also deletes the client tokens the provider issued."""

    def delete_auth_provider(account_id: str, provider_id: str) -> Deferred[None]:
        """With its identities and client tokens."""

    # -- identities --------------------------------------------------------------------
    def create_identity(
        account_id: str,
        actor_id: str,
        provider_id: str,
        provider_identifier: str,
        email: str | None = None,
    ) -> Deferred[Identity]:
        """``(provider, provider_identifier)`` is unique in the account."""

    def get_identity(account_id: str, identity_id: str) -> Deferred[Identity]:
        """One identity."""

    def find_identity(
        account_id: str, provider_id: str, provider_identifier: str
    ) -> Deferred[Identity]:
        """The sign-in lookup."""

    def list_identities(account_id: str, actor_id: str | None = None) -> Deferred[list[Identity]]:
        """All identities, or one actor's."""

    def delete_identity(account_id: str, identity_id: str) -> Deferred[None]:
        """Remove one identity."""

    # -- groups and memberships --------------------------------------------------------
    def create_group(account_id: str, name: str) -> Deferred[Group]:
        """A static group."""

    def get_group(account_id: str, group_id: str) -> Deferred[Group]:
        """One group."""

    def list_groups(account_id: str) -> Deferred[list[Group]]:
        """The account's groups, Everyone included."""

    def delete_group(account_id: str, group_id: str) -> Deferred[None]:
        """With its memberships and policies; Everyone cannot be deleted."""

    def add_membership(account_id: str, group_id: str, actor_id: str) -> Deferred[Membership]:
        """Not for Everyone, whose membership is implicit."""

    def get_membership(account_id: str, membership_id: str) -> Deferred[Membership]:
        """One membership."""

    def list_memberships(
        account_id: str, group_id: str | None = None, actor_id: str | None = None
    ) -> Deferred[list[Membership]]:
        """Stored memberships only (never Everyone's implicit ones)."""

    def delete_membership(account_id: str, membership_id: str) -> Deferred[None]:
        """Remove one membership."""

    # -- sites, resources, policies ----------------------------------------------------
    def create_site(account_id: str, name: str) -> Deferred[Site]:
        """Site names are unique per account."""

    def get_site(account_id: str, site_id: str) -> Deferred[Site]:
        """One site."""

    def list_sites(account_id: str) -> Deferred[list[Site]]:
        """The account's sites."""

    def delete_site(account_id: str, site_id: str) -> Deferred[None]:
        """With its resources, gateways and gateway tokens."""

    def create_resource(
        account_id: str,
        type: str,
        address: str | None,
        name: str,
        site_id: str,
        address_description: str | None = None,
        ip_stack: str | None = None,
        filters: Filters = (),
    ) -> Deferred[Resource]:
        """Address, ip_stack and filters are validated and normalised
        (``firezone.policy.filters``); one internet resource per account."""

    def get_resource(account_id: str, resource_id: str) -> Deferred[Resource]:
        """One resource."""

    def list_resources(account_id: str, site_id: str | None = None) -> Deferred[list[Resource]]:
        """All resources, or one site's."""

    def update_resource(
        account_id: str,
        resource_id: str,
        *,
        name: str = UNCHANGED,
        address: str | None = UNCHANGED,
        address_description: str | None = UNCHANGED,
        ip_stack: str | None = UNCHANGED,
        filters: Filters = UNCHANGED,
        site_id: str = UNCHANGED,
    ) -> Deferred[Resource]:
        """Change the given fields (the type never changes)."""

    def delete_resource(account_id: str, resource_id: str) -> Deferred[None]:
        """With its policies and authorizations."""

    def create_policy(
        account_id: str,
        group_id: str,
        resource_id: str,
        conditions: Conditions = (),
        description: str | None = None,
    ) -> Deferred[Policy]:
        """One policy per (group, resource); conditions validated by
        ``firezone.policy.conditions.parse_condition``."""

    def get_policy(account_id: str, policy_id: str) -> Deferred[Policy]:
        """One policy."""

    def list_policies(
        account_id: str, group_id: str | None = None, resource_id: str | None = None
    ) -> Deferred[list[Policy]]:
        """All policies, or those of a group and/or resource."""

    def update_policy(
        account_id: str,
        policy_id: str,
        *,
        conditions: Conditions = UNCHANGED,
        description: str | None = UNCHANGED,
    ) -> Deferred[Policy]:
        """Change the given fields."""

    def set_policy_disabled(account_id: str, policy_id: str, disabled: bool) -> Deferred[Policy]:
        """Disable or re-enable a policy."""

    def delete_policy(account_id: str, policy_id: str) -> Deferred[None]:
        """With its authorizations."""

    def list_policies_for_actor(account_id: str, actor_id: str) -> Deferred[list[PolicyGrant]]:
        """Enabled policies of the actor's groups, each with the granting membership
        (Everyone implicitly for users, ``membership_id=None``); empty for a
        disabled actor.  Conditions are left to the policy engine."""

    # -- devices -----------------------------------------------------------------------
    def upsert_device(
        account_id: str,
        type: str,
        external_id: str,
        *,
        name: str,
        public_key: str,
        actor_id: str | None = None,
        site_id: str | None = None,
        remote_ip: str | None = None,
        user_agent: str | None = None,
        version: str | None = None,
    ) -> Deferred[Device]:
        """Insert (fresh psk_base and tunnel addresses) or update by
        ``(account, type, external_id)``; clients need ``actor_id``, gateways
        ``site_id``."""

    def get_device(account_id: str, device_id: str) -> Deferred[Device]:
        """One device."""

    def find_device(account_id: str, type: str, external_id: str) -> Deferred[Device]:
        """A device by its external id."""

    def list_devices(
        account_id: str,
        type: str | None = None,
        site_id: str | None = None,
        actor_id: str | None = None,
    ) -> Deferred[list[Device]]:
        """All devices, optionally filtered."""

    def set_device_verified(account_id: str, device_id: str, verified: bool) -> Deferred[Device]:
        """The admin's "verify device" switch."""

    def delete_device(account_id: str, device_id: str) -> Deferred[None]:
        """With its authorizations."""

    # -- tokens ------------------------------------------------------------------------
    def create_token(
        account_id: str | None,
        type: str,
        *,
        secret_salt: str,
        secret_hash: str,
        actor_id: str | None = None,
        auth_provider_id: str | None = None,
        site_id: str | None = None,
        name: str | None = None,
        expires_at: float | None = None,
    ) -> Deferred[Token]:
        """Store a token row; ``firezone.portal.tokens.Tokens`` issues real tokens."""

    def get_token(account_id: str | None, token_id: str) -> Deferred[Token]:
        """``account_id=None`` finds relay tokens only."""

    def list_tokens(account_id: str | None, type: str | None = None) -> Deferred[list[Token]]:
        """``account_id=None`` lists relay tokens."""

    def mark_token_used(
        account_id: str | None, token_id: str, remote_ip: str | None = None
    ) -> Deferred[Token]:
        """Stamp ``last_used_at`` and ``last_used_remote_ip``."""

    def delete_token(account_id: str | None, token_id: str) -> Deferred[None]:
        """Revoke; announced on ``token_deleted``."""

    def delete_expired_tokens() -> Deferred[int]:
        """The sweep; each deletion announced on ``token_deleted``."""

    # -- policy authorizations ---------------------------------------------------------
    def create_policy_authorization(
        account_id: str,
        *,
        token_id: str,
        policy_id: str,
        initiating_device_id: str,
        receiving_device_id: str,
        resource_id: str,
        membership_id: str | None = None,
        initiator_remote_ip: str | None = None,
        initiator_user_agent: str | None = None,
        receiver_remote_ip: str | None = None,
        expires_at: float | None = None,
    ) -> Deferred[PolicyAuthorization]:
        """The referenced rows must belong to the account and agree."""

    def get_policy_authorization(
        account_id: str, authorization_id: str
    ) -> Deferred[PolicyAuthorization]:
        """One authorization."""

    def list_policy_authorizations(
        account_id: str, device_id: str | None = None
    ) -> Deferred[list[PolicyAuthorization]]:
        """All authorizations, or those a device takes part in."""

    def delete_policy_authorization(account_id: str, authorization_id: str) -> Deferred[None]:
        """Remove one authorization."""

    def delete_expired_policy_authorizations() -> Deferred[int]:
        """The every-minute sweep."""
