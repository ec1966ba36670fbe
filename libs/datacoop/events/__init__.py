"""Event contracts: the CloudEvents envelope, the registry of event types, encoding and upcasting.

Event models that other services or integrators read live here: they are the contract.
schemas/ is generated from them (`make schemas`) and never edited by hand.
"""

from datacoop.events.envelope import Envelope, derived_event_id, new_event_id
from datacoop.events.registry import (
    REGISTRY,
    Event,
    EventRegistry,
    UnknownEventType,
    event,
)

__all__ = [
    "REGISTRY",
    "Envelope",
    "Event",
    "EventRegistry",
    "UnknownEventType",
    "derived_event_id",
    "event",
    "new_event_id",
]

# Importing the contract modules registers their event types.
from datacoop.events import datasets as datasets
from datacoop.events import jobs as jobs
from datacoop.events import members as members
from datacoop.events import orders as orders
from datacoop.events import payouts as payouts
from datacoop.events import records as records
