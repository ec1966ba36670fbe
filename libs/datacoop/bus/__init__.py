"""The event bus: publishing envelopes with acks=all, and running projections from topics."""

from datacoop.bus.admin import ensure_topics
from datacoop.bus.consumer import ConsumerRunner, Delivery, Projection
from datacoop.bus.publisher import Position, Publisher

__all__ = ["ConsumerRunner", "Delivery", "Position", "Projection", "Publisher", "ensure_topics"]
