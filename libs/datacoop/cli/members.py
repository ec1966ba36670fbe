"""Member commands (consent service): register, grant, revoke, list, erase, receipts."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the member commands to the root CLI."""
