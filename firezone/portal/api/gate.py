"""The upgrade check in front of the WebSocket endpoints (REFERENCE 1.1).

Autobahn can refuse an upgrade only with a status line (``ConnectionDeny``):
no body, no headers.  connlib needs the RFC 9457 body (its ``code`` decides
whether the token is discarded) and ``Retry-After`` on 503, so each socket path
is a twisted.web resource that admits the request first -- token, rate limit,
parameters, device row, all asynchronously against the store -- and answers
refusals itself with ``application/problem+json``.  Admitted requests are
handed to Autobahn's ``WebSocketResource``, which performs the handshake on
the same connection; the admitted :class:`ConnectContext` travels with it.

:class:`Admission` holds the checks and knows nothing of HTTP; :class:`SocketGate`
only translates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from firezone.portal.api.connect import (
    ENDPOINTS,
    ROLE_CLIENT,
    ROLE_RELAY,
    DeviceParams,
    Endpoint,
    InvalidConnectParams,
    RateLimiter,
    Rejection,
    device_params,
    extract_token,
    parse_user_agent,
    relay_params,
)
from firezone.portal.api.context import ConnectContext
from firezone.portal.api.node import ApiNode
from firezone.portal.api.protocol import ApiServerFactory
from firezone.portal.store.errors import Conflict, InvalidRecord, NotFound
from firezone.portal.store.records import Device
from firezone.portal.tokens import TokenError
from firezone.wire.phoenix import ProblemDetails

__all__ = ["Admission", "SocketGate", "api_resource"]

_log = Logger()

MAX_USER_AGENT = 1024
MAX_VERSION = 64


class Admission:
    """Decide whether a connect request may become a socket, and on what terms."""

    def __init__(self, node: ApiNode, limiter: RateLimiter | None = None) -> None:
        self.node = node
        self.limiter = limiter if limiter is not None else RateLimiter()

    async def admit(
        self,
        endpoint: Endpoint,
        headers: Mapping[str, str],
        query: Mapping[str, Sequence[str]],
        remote_ip: str,
    ) -> ConnectContext:
        """The connection's context, or raise :class:`Rejection`.

        ``headers`` are keyed in lower case.  A gateway's id is claimed here and
        must be released (``node.release_gateway``) when its connection ends.
        """
        node = self.node
        token_text = extract_token(headers.get("x-authorization"), query)
        retry_after = self.limiter.check(RateLimiter.key(remote_ip, token_text), node.now())
        if retry_after is not None:
            raise Rejection.rate_limit(retry_after)
        try:
            token = await node.tokens.verify(token_text, endpoint.role)
        except TokenError:
            raise Rejection.invalid_token() from None
        user_agent = parse_user_agent(headers.get("user-agent", "")[:MAX_USER_AGENT])
        location = node.locate(remote_ip)
        try:
            if endpoint.role == ROLE_RELAY:
                return ConnectContext(
                    endpoint, token, remote_ip, user_agent, location, relay=relay_params(query)
                )
            params = device_params(endpoint.role, query)
            if endpoint.role == ROLE_CLIENT and user_agent.component is None:
                raise InvalidConnectParams("user_agent is invalid")
            if user_agent.version is not None and len(user_agent.version) > MAX_VERSION:
                raise InvalidConnectParams("user_agent is invalid")
        except InvalidConnectParams as e:
            raise Rejection.invalid_connect_params(str(e)) from None
        if token.account_id is None:
            raise Rejection.invalid_token()
        try:
            account = await node.store.get_account(token.account_id)
            if endpoint.role == ROLE_CLIENT:
                if token.actor_id is None:
                    raise Rejection.invalid_token()
                actor = await node.store.get_actor(account.id, token.actor_id)
                if actor.disabled:
                    raise Rejection.unauthenticated()
                device = await self._upsert(account.id, "client", params, remote_ip,
                                            user_agent.raw, user_agent.version, actor_id=actor.id)
                context = ConnectContext(endpoint, token, remote_ip, user_agent, location,
                                         account=account, actor=actor, device=device,
                                         params=params)
            else:
                if token.site_id is None:
                    raise Rejection.invalid_token()
                try:
                    known = await node.store.find_device(account.id, "gateway", params.external_id)
                except NotFound:
                    known = None
                if known is not None and node.gateway_taken(known.id):
                    raise Rejection.gateway_already_connected()
                device = await self._upsert(account.id, "gateway", params, remote_ip,
                                            user_agent.raw, user_agent.version,
                                            site_id=token.site_id)
                context = ConnectContext(endpoint, token, remote_ip, user_agent, location,
                                         account=account, device=device, params=params)
                if not node.claim_gateway(device.id, context):
                    raise Rejection.gateway_already_connected()
        except NotFound:
            # The token's account, actor or site went away since it was checked.
            raise Rejection.invalid_token() from None
        await self._mark_used(token.account_id, token.id, remote_ip)
        return context

    async def _upsert(
        self, account_id: str, type: str, params: DeviceParams, remote_ip: str,
        user_agent: str, version: str | None, **owner: str,
    ) -> Device:
        try:
            return await self.node.store.upsert_device(
                account_id, type, params.external_id, name=params.name,
                public_key=params.public_key, remote_ip=remote_ip,
                user_agent=user_agent or None, version=version, **owner,
            )
        except Conflict:
            # A client id already used by another actor's device: not this subject's to take.
            raise Rejection.unauthenticated() from None
        except InvalidRecord as e:
            raise Rejection.invalid_connect_params(str(e)) from None

    async def _mark_used(self, account_id: str | None, token_id: str, remote_ip: str) -> None:
        try:
            await self.node.store.mark_token_used(account_id, token_id, remote_ip)
        except Exception:
            _log.failure("recording the use of token {token} failed", token=token_id)


def _headers(request: Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        key = name.decode("latin-1").lower()
        if values and key not in out:
            out[key] = values[0].decode("latin-1")
    return out


def _query(request: Request) -> dict[str, list[str]]:
    query = urlsplit(request.uri.decode("latin-1")).query
    return parse_qs(query, keep_blank_values=True)


def _remote_ip(request: Request) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else "0.0.0.0"


class SocketGate(Resource):
    """One socket path: admit, then hand over to Autobahn or refuse with problem details."""

    isLeaf = True

    def __init__(self, endpoint: Endpoint, admission: Admission, factory: ApiServerFactory) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.admission = admission
        self.factory = factory
        self._websocket = WebSocketResource(factory)

    def render_GET(self, request: Request) -> bytes | int:
        upgrade = (request.getHeader(b"upgrade") or b"").decode("latin-1").strip().lower()
        if upgrade != "websocket":
            request.setHeader(b"upgrade", b"websocket")
            return self._problem(request, Rejection(426, "upgrade_required",
                                                    "This endpoint only speaks WebSocket"))
        lost: list[bool] = []
        request.notifyFinish().addErrback(lambda _: lost.append(True))
        d = Deferred.fromCoroutine(
            self.admission.admit(self.endpoint, _headers(request), _query(request),
                                 _remote_ip(request))
        )
        d.addCallbacks(lambda ctx: self._accept(request, ctx, lost),
                       lambda failure: self._refuse(request, failure, lost))
        d.addErrback(lambda f: _log.failure("handing over a socket failed", f))
        return NOT_DONE_YET

    def _accept(self, request: Request, ctx: ConnectContext, lost: list[bool]) -> None:
        if lost or request.channel is None or request.channel.transport is None:
            if ctx.device is not None:
                self.admission.node.release_gateway(ctx.device.id, ctx)
            return
        self.factory.incoming = ctx
        try:
            result = self._websocket.render(request)
        except Exception:
            if ctx.device is not None:
                self.admission.node.release_gateway(ctx.device.id, ctx)
            raise
        finally:
            self.factory.incoming = None
        if result is not NOT_DONE_YET:
            if ctx.device is not None:
                self.admission.node.release_gateway(ctx.device.id, ctx)
            request.write(result)
            request.finish()

    def _refuse(self, request: Request, failure: Failure, lost: list[bool]) -> None:
        if failure.check(Rejection):
            rejection: Rejection = failure.value  # type: ignore[assignment]
            _log.info("refused {role} socket from {peer}: {status} {code}",
                      role=self.endpoint.role, peer=_remote_ip(request),
                      status=rejection.status, code=rejection.code)
        else:
            _log.failure("admitting a {role} socket failed", failure, role=self.endpoint.role)
            rejection = Rejection.unhandled()
        if lost:
            return
        body = self._problem(request, rejection)
        request.setHeader(b"content-length", str(len(body)).encode())
        request.write(body)
        request.finish()

    @staticmethod
    def _problem(request: Request, rejection: Rejection) -> bytes:
        request.setResponseCode(rejection.status)
        request.setHeader(b"content-type", ProblemDetails.CONTENT_TYPE.encode())
        if rejection.retry_after is not None:
            request.setHeader(b"retry-after", str(rejection.retry_after).encode())
        return rejection.problem().encode()


def api_resource(node: ApiNode, reactor: Any, limiter: RateLimiter | None = None) -> Resource:
    """The resource tree with the five socket paths, ready to mount at the site root."""
    admission = Admission(node, limiter)
    factory = ApiServerFactory(node, reactor)
    root = Resource()
    for path, endpoint in ENDPOINTS.items():
        parent = root
        segments = [s.encode() for s in path.strip("/").split("/")]
        for segment in segments[:-1]:
            child = parent.children.get(segment)
            if child is None:
                child = Resource()
                parent.putChild(segment, child)
            parent = child
        parent.putChild(segments[-1], SocketGate(endpoint, admission, factory))
    return root
