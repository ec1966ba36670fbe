"""Events of the payouts topic (writer: the settlement service)."""

from __future__ import annotations
