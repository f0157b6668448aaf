"""Command-line interface: a thin layer over the library.

One module per command: :mod:`~xraypose.cli.render`, :mod:`~xraypose.cli.info`, :mod:`~xraypose.cli.demo`,
:mod:`~xraypose.cli.train`, :mod:`~xraypose.cli.register` (several X-rays tied by a rig:
:mod:`~xraypose.cli.rig`), :mod:`~xraypose.cli.evaluate`, :mod:`~xraypose.cli.track`,
:mod:`~xraypose.cli.datasets` (``xraypose datasets example | check | fixtures``); what they share:
:mod:`~xraypose.cli.options` (option ranges, the options several commands take, parsers),
:mod:`~xraypose.cli.config` (``--config FILE.toml``) and :mod:`~xraypose.cli.steps` (the steps of a
registration: CT, X-rays, start, result).  This module holds the app and :func:`main` (exit codes).

The commands that write results hold a lock on their output while they run (:data:`LOCKED_OUTPUTS`,
:mod:`xraypose.output_lock`): a second run into the same folder (or ``train -o`` the same model) is refused.

User errors (bad files, values, geometry) and xraypose's other own errors (an output that cannot be
written, a training that diverged: :class:`xraypose.errors.XrayposeError`) print one line
``xraypose: error: …`` and exit with status 2; ``--debug`` shows the Python traceback instead.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys

import typer

from xraypose.cli.options import CheckedCommand
from xraypose.errors import XrayposeError

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="xraypose: find where an X-ray was taken from (CT + X-ray → 6-DoF C-arm pose).",
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks for errors.")) -> None:
    """Declares --debug for the help; :func:`main` reads it from the command line (accepted anywhere)."""


def _register_commands() -> None:
    """Each command lives in its own module; the order is the help's."""
    from xraypose.cli.datasets import app as datasets_app
    from xraypose.cli.demo import demo_command
    from xraypose.cli.evaluate import evaluate_command
    from xraypose.cli.info import info_command
    from xraypose.cli.register import register_command
    from xraypose.cli.render import render_command
    from xraypose.cli.track import track_command
    from xraypose.cli.train import train_command

    app.command("render")(render_command)
    app.command("info")(info_command)
    app.command("demo")(demo_command)
    app.command("train")(train_command)
    app.command("register")(register_command)
    app.command("evaluate")(evaluate_command)
    app.command("track")(track_command)
    app.add_typer(datasets_app, name="datasets")


_register_commands()


def _check_options_when_parsed() -> None:
    """Every command checks its option values right after parsing (ranges: :mod:`xraypose.cli.options`)."""
    for command in app.registered_commands + [c for g in app.registered_groups
                                              for c in g.typer_instance.registered_commands]:
        command.cls = CheckedCommand


_check_options_when_parsed()

#: The commands that write results, each with the option naming its output: a folder, locked by its
#: ``.xraypose.lock`` while the command runs (``train``'s model file by ``NAME.lock`` beside it).  ``info`` reads
#: only; ``render`` writes one file, atomically (two renders to one file: the last one's, whole).
LOCKED_OUTPUTS = {"demo": "output", "train": "output", "register": "output", "evaluate": "output",
                  "track": "output", "datasets example": "out", "datasets check": "out", "datasets fixtures": "out"}
#: Of those, the commands whose output is a file (the lock lies beside it).
_FILE_OUTPUTS = {"train"}
#: The command line being run (``xraypose ...``), recorded in the lock.
_command_line: list[str] | None = None


def _locking(callback, option: str, file: bool):
    """``callback`` run holding the lock of its output (the value of its parameter ``option``; none given: no
    lock).  Under torchrun only rank 0 takes it: the ranks of one run share the folder."""

    @functools.wraps(callback)
    def run(**values):
        from xraypose.output_lock import output_lock

        output = values.get(option)
        if output is None or int(os.environ.get("RANK", "0") or 0) != 0:
            return callback(**values)
        with output_lock(output, file=file, command=_command_line):
            return callback(**values)

    run.__signature__ = inspect.signature(callback, eval_str=True)
    return run


def _lock_outputs() -> None:
    """Wrap each command of :data:`LOCKED_OUTPUTS` in :func:`_locking` (in one place: every command that writes)."""
    commands = [(c.name, c) for c in app.registered_commands] + [
        (f"{g.name} {c.name}", c) for g in app.registered_groups for c in g.typer_instance.registered_commands]
    for name, command in commands:
        if name in LOCKED_OUTPUTS:
            command.callback = _locking(command.callback, LOCKED_OUTPUTS[name], file=name in _FILE_OUTPUTS)


_lock_outputs()


@functools.lru_cache(maxsize=1)
def _command():
    """The parser of all commands, built once (typer rebuilds it on every ``app()`` call: 0.15 s)."""
    return typer.main.get_command(app)


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line ``xraypose: warning: …`` on stderr (not Python's file:line and source)."""
    print(f"xraypose: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``xraypose`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `torchrun ... -m xraypose.cli -- evaluate ...` (some Pythons pass the "--" on)
        argv = argv[1:]
    debug = "--debug" in argv
    import warnings

    global _command_line
    with warnings.catch_warnings():  # restores the caller's warning handling afterwards
        warnings.showwarning = _print_warning
        _command_line = ["xraypose", *argv]  # what an output's lock records
        try:
            return _run(argv, debug)
        finally:
            _command_line = None


def _dash_file_hint(error, argv: list[str]) -> str:
    """For "No such option: -r" read from a file named ``-röntgen 1.png``: how to give that file."""
    option = getattr(error, "option_name", None)
    if type(error).__name__ != "NoSuchOption" or not option:
        return ""
    for arg in argv:
        if arg == "--":
            break
        if arg.startswith(option) and os.path.lexists(arg):
            return f" ({arg!r} is a file whose name starts with '-': give it as ./{arg} or after --)"
    return ""


def _run(argv: list[str], debug: bool) -> int:
    if debug:  # accepted anywhere on the line
        argv = ["--debug"] + [a for a in argv if a != "--debug"]
    try:
        code = _command()(args=argv, prog_name="xraypose", standalone_mode=False)
        if code == 130:  # Ctrl-C in a command: typer returns its Exit(130) here (not standalone), not raised
            raise KeyboardInterrupt
    except XrayposeError as e:  # bad input (InputError), an output that cannot be written, a failed run
        if debug:
            raise
        print(f"xraypose: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        if debug:
            raise
        print(f"xraypose: error: file not found: {e.filename or e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output that cannot be written, a full disk, ... (one line, no traceback)
        if debug:
            raise
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"xraypose: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xraypose: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # typer's own exits
        return int(e.code or 0)
    except Exception as e:
        # Usage errors of the command-line parser (typer's click): bad option, missing argument...
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            if type(e).__name__ == "Abort":
                return 1
            if debug:
                raise
            message = e.format_message() + _dash_file_hint(e, argv)
            if message:  # empty when the command printed its help instead (a group run without a command)
                print(f"xraypose: error: {message}", file=sys.stderr)
            return 2
        raise
    return 0

