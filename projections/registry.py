"""Every projection the broker maintains, by name. Later read models (grants, mints, quarantine,
auth requests) add themselves here; the CLI, the workers and the API composition root build their
runner from `all_projections()`."""

from __future__ import annotations

from collections.abc import Callable

from .auth_requests import AuthRequestsProjection
from .base import Projection
from .errors import UnknownProjection
from .grants import GrantsProjection
from .mints import MintsProjection
from .quarantine import QuarantineProjection
from .sessions import SessionsProjection
from .wallets import WalletsProjection

FACTORIES: dict[str, Callable[[], Projection]] = {
    WalletsProjection.name: WalletsProjection,
    GrantsProjection.name: GrantsProjection,
    SessionsProjection.name: SessionsProjection,
    MintsProjection.name: MintsProjection,
    QuarantineProjection.name: QuarantineProjection,
    AuthRequestsProjection.name: AuthRequestsProjection,
}


def names() -> list[str]:
    return list(FACTORIES)


def all_projections() -> list[Projection]:
    return [factory() for factory in FACTORIES.values()]


def get(name: str) -> Projection:
    try:
        return FACTORIES[name]()
    except KeyError:
        raise UnknownProjection(name, names()) from None
