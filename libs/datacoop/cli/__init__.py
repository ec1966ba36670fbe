"""`datacoop`: one command-line program for every role (operator, member, researcher, provider)."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperArgument, TyperGroup, TyperOption

from datacoop.cli import stack as stack_mod
from datacoop.cli.common import fail
from infra.local import InfraError

err = Console(stderr=True)


def _argument_name(param: TyperArgument) -> str:
    """An argument as help and usage lines name it: its metavar, else its name in capitals without `_id`
    (`order_id` -> ORDER, `query_file` -> QUERY_FILE), as the README writes them."""
    if param.metavar is not None:
        return param.metavar
    return (param.name or "").upper().removesuffix("_ID") or (param.name or "").upper()


def _usage_name(param: TyperArgument) -> str:
    """An argument in a usage line: ORDER when required, [ORDER] when not (typer's own writes {order_id})."""
    name = _argument_name(param)
    name = name if param.required else f"[{name}]"
    return name + ("..." if param.nargs != 1 else "")


def _flag_type(param: TyperOption, ctx: Any) -> str | None:
    """No value type after a flag (`--debug`, `--help` take none; typer's own help writes `<bool>`)."""
    if param.is_flag:
        return None
    return _typed_option_type(param, ctx)


_typed_option_type = TyperOption.display_type_rich
# typer (0.29) writes arguments as `{order_id}` in usage lines and `<bool>` after flags: datacoop's help reads as
# the README does instead (ORDER QUERY_FILE, flags bare). These are the only formatting hooks typer offers, and
# they are set once here, for this program.
TyperArgument.display_name_raw = property(_argument_name)  # type: ignore[method-assign,assignment]
TyperArgument._usage_display_name = _usage_name  # type: ignore[method-assign,assignment]
TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign,assignment]


class OneLineUsageErrors(TyperGroup):
    """The root command: a usage error (an unknown option, a missing or out-of-range value) is one red line
    like every other error, saying where the command's options are listed; its exit code stays click's 2."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, windows_expand_args, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except typer.TyperException as exc:  # click's usage errors (typer vendors click)
            if type(exc).__name__ == "NoArgsIsHelpError":  # the help, printed already
                sys.exit(exc.exit_code)
            message = exc.format_message().rstrip(".")
            command = _command_path(getattr(exc, "ctx", None))
            if getattr(exc, "option_name", None) == "--debug" and command != "datacoop":  # a root option
                message = (f"--debug goes before the command, not after it: `datacoop --debug "
                           f"{command.removeprefix('datacoop ')} ...`")
            err.print(f"[red]error:[/red] {escape(message[:1].lower() + message[1:])}; see "
                      f"`{escape(command)} --help`", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            err.print("[red]error:[/red] aborted", highlight=False)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _command_path(ctx: Any) -> str:
    """`datacoop` and the (sub)command names of a click context, however the program was started."""
    names: list[str] = []
    while ctx is not None and ctx.parent is not None:
        names.insert(0, ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(["datacoop", *names])


app = typer.Typer(cls=OneLineUsageErrors, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console()
__all__ = ["app", "fail", "main"]


class State:
    debug = False


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks on errors; it goes before the "
                                                              "command: `datacoop --debug orders`")] = False) -> None:
    """datacoop: members own their data and are paid on-chain when researchers use it.

    Errors are one red line: exit status 1 when a command fails, 2 for a usage error. For the traceback behind one, put --debug before the command: `datacoop --debug COMMAND ...`."""  # noqa: E501 (one paragraph of help)
    State.debug = debug
    from datacoop.cli import common

    common._KEY_FILE.clear()  # one command's key (a test runs many in one process)


def _status_table(described: dict[str, Any]) -> Table:
    table = Table(title="datacoop local stack")
    for col in ("component", "address", "pid", "state"):
        table.add_column(col)
    for row in stack_mod.status_rows(described):
        table.add_row(*row)
    return table


_NEXT = {"marketplace": "`datacoop catalog`", "anonymizer": "`datacoop dataset list`",
         "consent": "`datacoop wallet new --out me.key` then `datacoop member register --key-file me.key`"}


def _what_next(stack: stack_mod.Stack) -> None:
    first = next(iter(stack.services.values()), None)
    steps = [hint for name, hint in _NEXT.items() if name in stack.services]
    console.print((f"next: {' or '.join(steps[:2])} in another terminal; " if steps else "")
                  + (f"{first.url}/docs for the {first.entry.name} API; " if first else "")
                  + f"logs in {stack_mod.RUN_DIR / 'logs'}/", highlight=False)


def _left_out(only: list[str], chain: bool, workers: int) -> list[str]:
    """What `up` will not start and why (said, not silently skipped); fails when a service asked for by
    name can't run."""
    chained = [s.name for s in stack_mod.SERVICES if s.needs_chain and (not only or s.name in only)]
    if not chain and only and chained:
        fail(f"{', '.join(chained)} need(s) the chain (orders are paid and settled on it); drop --no-chain, "
             "or leave them out of --services")
    notes = []
    if not chain and chained:
        notes.append(f"without a chain (--no-chain), {', '.join(chained)} are not started: orders are paid and "
                     "settled on chain")
    if workers and only and "jobs" not in only:
        notes.append("no workers: they take their jobs from the jobs service, which is not in --services")
    return notes


@app.command()
def up(
    demo: Annotated[bool, typer.Option("--demo/--no-demo", help="play the demo scenario once ready")] = False,
    exit_after_demo: Annotated[bool, typer.Option(help="stop everything after the scenario")] = False,
    services: Annotated[str, typer.Option(help="comma-separated services to start (default: all)")] = "",
    chain: Annotated[bool, typer.Option("--chain/--no-chain", help="start the local anvil chain")] = True,
    workers: Annotated[int, typer.Option(min=0, max=16, help="GPU/CPU worker processes to start")] = 3,
) -> None:
    """Start the broker, the chain and every service; show their state; Ctrl-C stops them all."""
    known = [s.name for s in stack_mod.SERVICES]
    only = [s for s in services.split(",") if s]
    unknown = sorted(set(only) - set(known))
    if unknown:
        fail(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(known) or '(none yet)'}", 2)
    if exit_after_demo and not demo:
        fail("--exit-after-demo stops the stack once the demo scenario has played, and without --demo none plays; "
             "add --demo (`datacoop up --demo --exit-after-demo`), or drop --exit-after-demo")
    notes = _left_out(only, chain, workers)
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    try:
        with console.status("starting broker, chain and services ..."):
            stk = stack_mod.start_stack(only or None, with_chain=chain)
    except InfraError as exc:
        fail(str(exc))
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    failure: str | None = None  # why the stack stopped on its own
    finished = False  # stopped as asked: Ctrl-C, SIGTERM, or the demo played with --exit-after-demo
    try:
        with console.status("waiting for every service to catch up with the log ..."):
            # Ctrl-C meanwhile: a terminal ends the services too (not a failure), and nothing more starts
            stack_mod.wait_ready(stk, should_stop=lambda: stopping)
            if not stopping:
                stack_mod.start_workers(stk, workers)
        if not stopping:
            console.print(_status_table(stk.describe()))
            for note in notes:
                console.print(f"[yellow]note[/yellow]: {note}", highlight=False)
            for svc in stk.services.values():
                if svc.moved:
                    console.print(f"[yellow]port {svc.entry.default_port} was taken[/yellow]: {svc.entry.name} "
                                  f"listens on {svc.port}", highlight=False)
            console.print(f"stack described in {stack_mod.STACK_FILE} (`datacoop status`); it starts empty: "
                          "no members, datasets or researchers from an earlier run" + ("" if demo else
                          " (`--demo` plays a scenario that fills it)"), highlight=False)
        if demo and not stopping:
            from datacoop.cli.demo import run_demo

            try:
                run_demo(stk.describe(), console)
            except Exception:
                # after Ctrl-C the demo fails as the services end on it: that is the stop asked for
                failure = None if stopping else _died(stk)
                if failure is None and not stopping:  # the demo's own failure: main() says it in one line
                    raise
        if failure is None and not exit_after_demo and not stopping:
            _what_next(stk)
            console.print("[bold]running[/bold]; Ctrl-C stops everything")
            while not stopping and failure is None:
                time.sleep(0.2)
                # after Ctrl-C a terminal signals the services too (one process group): those that end on
                # it have not died on their own
                failure = None if stopping else _died(stk)
        finished = failure is None
    except InfraError as exc:
        failure = str(exc)
    finally:
        with console.status("stopping ..."):
            stk.stop()
        if finished:
            console.print("stopped cleanly")
    if failure is not None:
        fail(failure)


def _died(stk: stack_mod.Stack) -> str | None:
    """What to say when a service of the stack has exited on its own: which, how, where its log is."""
    dead = [f"service {s.entry.name} {_how(s.proc.returncode)} (its log: {s.log_path})"
            for s in stk.services.values() if s.proc.poll() is not None]
    # the broker and the chain too: the services would wait on them for ever (the broker's log is in memory: gone)
    infra = (("broker", stk.broker), ("chain", stk.chain))
    dead += [f"the {what} {_how(p.proc.returncode)} (its log: {p.log_path})"
             for what, p in infra if p is not None and p.proc.poll() is not None]
    if not dead:
        return None
    return f"{'; '.join(dead)}; the rest of the stack was stopped: see the log, then `datacoop up` again"


def _how(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="the stack description as JSON (keys hidden)")]
           = False) -> None:
    """Show the running stack (from var/run/stack.json): each component's address, pid and state now."""
    try:
        data = stack_mod.load_stack_file()
    except InfraError as exc:
        fail(str(exc))
    if as_json:
        console.print_json(data=stack_mod.redacted(data))
        return
    console.print(_status_table(data))
    gone = stack_mod.owner_gone(data)
    if gone is not None:
        console.print(f"[yellow]{escape(gone)}[/yellow]", soft_wrap=True)  # the kill line stays copyable
        raise typer.Exit(1)


@app.command()
def schemas(action: Annotated[str, typer.Argument(help="write | check")] = "check") -> None:
    """Regenerate (write) or verify (check) schemas/ from the event models."""
    from datacoop import schemas as schemas_mod

    if action not in ("write", "check"):
        fail(f"unknown action {action!r}; use 'write' or 'check'", 2)
    code = schemas_mod.main([action])
    if code == 0 and action == "check":
        console.print("schemas/ is up to date with the event models")
    raise typer.Exit(code)


from datacoop.cli import anonymizer as _anonymizer  # noqa: E402
from datacoop.cli import dlq as _dlq  # noqa: E402
from datacoop.cli import jobs as _jobs  # noqa: E402
from datacoop.cli import market as _market  # noqa: E402
from datacoop.cli import members as _members  # noqa: E402
from datacoop.cli import settlement as _settlement  # noqa: E402
from datacoop.cli import vault as _vault  # noqa: E402

for _area in (_members, _vault, _anonymizer, _market, _jobs, _settlement, _dlq):
    _area.register(app)


def _one_paragraph_summaries(typer_app: typer.Typer) -> None:
    """Each command's line in a --help list is its docstring's first paragraph with the line breaks of the
    source folded (rich keeps them, and cut entries mid-sentence)."""
    for info in typer_app.registered_commands:
        doc = info.help or (info.callback.__doc__ if info.callback else None)
        if info.short_help is None and doc:
            info.short_help = " ".join(doc.strip().split("\n\n")[0].split())
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _one_paragraph_summaries(group.typer_instance)


_one_paragraph_summaries(app)


def main() -> None:
    try:
        app()
    except Exception as exc:  # one red line, no traceback unless --debug
        if State.debug or "--debug" in sys.argv:
            raise
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        sys.exit(1)
