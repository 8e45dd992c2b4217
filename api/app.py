"""The Litestar application. `create_app(services)` is the HTTP composition: routes, error mapping,
OpenAPI. Handlers are thin: they read projections/ledger through `Services` and return wire Structs.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, MediaType, Response, get
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import Components

from . import log_redaction
from .errors import EXCEPTION_HANDLERS
from .http_hygiene import BodyTimeoutMiddleware, no_store
from .logs import request_id_middleware
from .routes.audit import audit_record
from .routes.auth_email import email_landing, email_request, email_status, email_verify, email_verify_get
from .routes.auth_exchange import auth_exchange
from .routes.auth_oauth2 import oauth2_callback, oauth2_start, oauth2_status
from .routes.auth_session import session_revoke_route
from .routes.auth_wallet import wallet_start, wallet_verify
from .routes.grants import daemon_release, grant_create, grant_list, grant_revoke
from .routes.mint import mint_aws_creds
from .routes.operator import ROUTES as OPERATOR_ROUTES
from .routes.operator_page import ROUTES as OPERATOR_PAGE_ROUTES
from .runtime import Services
from .schemas import AnchorPosition, AuditHead, ErrorBody, ReadinessBody


def _services(state: State) -> Services:
    return state.services


@get("/healthz", media_type=MediaType.TEXT, sync_to_thread=False, summary="Liveness", tags=["status"])
def healthz() -> str:
    """200 `ok` while the process serves HTTP (no dependency is contacted)."""
    return "ok"


@get(
    "/readyz",
    summary="Readiness of every configured dependency",
    tags=["status"],
    responses={503: ResponseSpec(data_container=ReadinessBody, generate_examples=False, description="A required dependency is "
                                                                                                    "unready")},
    sync_to_thread=False,
)
def readyz(state: State) -> Response[ReadinessBody]:
    """The latest background probe of each dependency (ledger writable, each anchor, STS, keys,
    projections; never probed on this request, so it answers at once whatever hangs). 503 when a
    check the audit policy requires is unready; `degraded` (200) for one it does not require. The
    body lists the failing checks with a runbook link and `age_ms` per check."""
    code, body = _services(state).readiness_report()
    return Response(content=body, status_code=code, media_type=MediaType.JSON)  # type: ignore[arg-type]  # body is the ReadinessBody shape as a dict; the annotation feeds the OpenAPI schema


@get("/v1/audit/head", summary="Chain head and each anchor's confirmed position", tags=["audit"], sync_to_thread=True)
def audit_head(state: State) -> AuditHead:
    services = _services(state)
    head = services.ledger.head()
    anchors = {}
    for anchor in services.anchors:
        anchors[anchor.name] = AnchorPosition(confirmed_seq=services.pump.confirmed(anchor.name))
    return AuditHead(seq=head.seq, hash=head.hash, anchors=anchors)


# py_ecc (imported by eth_account) raises the interpreter's recursion limit to 100000; msgspec's
# nesting guard follows that limit, so a 60 KB body of nested brackets would overflow the C stack
# and kill the process. The broker needs no deep recursion: put a sane limit back.
RECURSION_LIMIT = 1000


def create_app(services: Services, *, manage_lifecycle: bool = True) -> Litestar:
    sys.setrecursionlimit(RECURSION_LIMIT)
    log_redaction.install()  # no secret in any log line (idempotent; the CLI installs it first)
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if manage_lifecycle:
            services.start()
        try:
            yield
        finally:
            aclose = getattr(services.legacy.backend, "aclose", None) if services.legacy is not None else None
            if aclose is not None:
                await aclose()
            if manage_lifecycle:
                services.stop()

    from litestar import Router
    from litestar.openapi.spec import SecurityScheme

    from .docs_ui import docs_ui

    render_plugins, asset_routes = docs_ui()
    # Routes that take `Authorization: Bearer` (a session JWT; the audit route also the operator token).
    bearer_routes = Router(path="/", route_handlers=[grant_create, grant_revoke, grant_list, daemon_release,
                                                     mint_aws_creds, auth_exchange, audit_record,
                                                     session_revoke_route],
                           security=[{"bearer": []}])
    app = Litestar(
        route_handlers=[healthz, readyz, audit_head, wallet_start, wallet_verify, bearer_routes, *asset_routes,
                        *OPERATOR_ROUTES, *OPERATOR_PAGE_ROUTES,
                        email_request, email_verify, email_verify_get, email_status, email_landing,
                        oauth2_start, oauth2_callback, oauth2_status],
        request_max_body_size=services.config.body_limit_bytes,
        middleware=[DefineMiddleware(BodyTimeoutMiddleware, timeout_s=services.config.body_timeout_s)],
        before_send=[no_store],
        state=State({"services": services}),
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="AgentKeys Broker",
            version="0.1.0",
            description="Short-lived AWS credentials for agents and daemons, released only after the audit anchors confirm the "
                        "ledger event.",
            path="/schema",
            use_handler_docstrings=True,
            render_plugins=render_plugins,
            components=Components(security_schemes={"bearer": SecurityScheme(
                type="http", scheme="bearer", bearer_format="JWT",
                description="A session JWT from POST /v1/auth/wallet/verify (`Authorization: Bearer <jwt>`); "
                            "GET /v1/audit/records/{seq} also takes the operator token, POST /v1/auth/exchange "
                            "the legacy bearer.")}),
        ),
        signature_namespace={"ErrorBody": ErrorBody},
        debug=False,
        logging_config=None,  # the entry point configures logging once (api/logs.py); Litestar must not
    )
    # outermost, so that every response (404s of unknown paths too) gets its request id and access line
    app.asgi_handler = request_id_middleware(app.asgi_handler)  # type: ignore[arg-type, assignment]  # Litestar's typed ASGI unions vs the plain-mapping ASGI middleware
    return app
