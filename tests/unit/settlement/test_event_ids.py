"""The ids settlement derives for its reactions: one per event of a reaction, the same on a re-send."""

from __future__ import annotations

from datacoop.events import derived_event_id
from datacoop.events.payouts import PaymentFlagged, RevenueAllocated
from services.settlement import domain
from services.settlement.service import _derived

COOP = "0x" + "c0" * 20
ORDER = domain.Order("o-1", "ds-1", 1, 1_000)


def _allocation() -> list[str]:
    """The ids of an allocation that flags twice: paid above the price, for a version with no contributors."""
    events = domain.allocate_order(domain.Payment("o-1", 1_100, True), ORDER, {}, 500, COOP, already_allocated=False)
    assert [type(e) for e in events] == [PaymentFlagged, PaymentFlagged, RevenueAllocated]
    id_for = _derived("allocation:o-1")
    return [id_for(e) for e in events]


def test_each_event_of_an_allocation_that_flags_twice_has_its_own_id() -> None:
    """A reader of the log applies one event per id: two flags under one id would leave a rebuilt
    projection without the second (and the writer refuses such a command)."""
    ids = _allocation()
    assert len(set(ids)) == 3, ids


def test_a_resent_reaction_gets_the_same_ids_and_an_allocation_keeps_the_id_it_always_had() -> None:
    """Re-sends drop as duplicates only if their ids are the ids of the first send, across releases too."""
    ids = _allocation()
    assert _allocation() == ids
    assert ids[2] == derived_event_id("allocation:o-1", RevenueAllocated.type_name())
    assert ids[2] == "349f0e71-7832-5130-88e8-1c8cfee0e7ab"  # what earlier releases derived for it
    assert ids[:2] == [derived_event_id("allocation:o-1", PaymentFlagged.type_name(), reason)
                       for reason in ("amount-mismatch", "no-contributors")]
