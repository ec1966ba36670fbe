"""The demo scenario `make run` plays against a running stack; each feature adds its chapter."""

from __future__ import annotations

from rich.console import Console


def run_demo(stack: dict[str, object], console: Console) -> None:
    console.rule("demo scenario")
    services = stack.get("services") or {}
    console.print(f"broker {stack['broker']}, chain {stack['chain']}, services: {', '.join(services) or 'none'}")
    console.rule("demo done")
