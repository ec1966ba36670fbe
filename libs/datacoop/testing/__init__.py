"""Test and benchmark support shipped with libs: a small ledger event type and projection, kept in a
registry of their own so they never appear in schemas/."""
