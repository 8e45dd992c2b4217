"""Command registration (filled in by the owning package)."""


def register(subparsers) -> None:  # noqa: ANN001
    return None
