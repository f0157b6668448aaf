"""``--config FILE.toml`` for the CLI commands: a TOML file whose keys mirror the command's options.

A key is an option's long name without the dashes (``lr-rot`` or ``lr_rot``);
values have the option's type.  Options given on the command line win over the
file.  The keys may sit at the top level or in a table named after the command,
so one file can serve several commands (a table named after no command is an error).
Top-level keys apply to every command that reads the file; a command's table adds to
them and wins where both set a key (until 2026-12-05 a file with a table for the command
silently ignored its top-level keys)::

    # register.toml                       # or, shared:  [register] / [evaluate] / [track] / ...
    similarity = "mncc"
    lr-rot = 7.5e-3
    lr-trans = 7.5
    schedule = "plateau"
    bone-multiplier = 1.0

``xraypose train`` has its own TOML layout (the training configuration's
tables, :mod:`xraypose.train`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from xraypose.errors import InputError

__all__ = ["config_option", "read_command_config"]

_COMMANDS = ("render", "register", "evaluate", "demo", "info", "track")


def read_command_config(path: Path, command: str, allowed: dict[str, object]) -> dict:
    """The ``command``'s settings from a TOML file, keyed by the options' Python names.

    Args:
        path: the TOML file.
        command: the command's name (its table, if the file has one).
        allowed: {python name: click parameter} of the command's options.
    Raises:
        InputError: unreadable file, a key that is no option of the command, a table named
            after no command (a typo such as ``[evaluat]`` would otherwise be ignored).
    """
    from xraypose.io import read_toml

    path = Path(path).expanduser()
    data = read_toml(path)
    unknown = [k for k, v in data.items() if isinstance(v, dict) and k not in _COMMANDS
               and k.replace("-", "_") not in allowed]  # an option given a table: refused below
    if unknown:
        raise InputError(f"config file {path}: unknown table [{unknown[0]}]; known: "
                         f"{', '.join(f'[{c}]' for c in _COMMANDS)} (or the options' keys at the top level)")
    table = data.get(command, None)
    # the top-level keys (every command's), then the command's own table over them; other commands' tables
    # are ignored
    data = {k: v for k, v in data.items() if not (k in _COMMANDS and isinstance(v, dict))}
    if isinstance(table, dict):
        data = {**{k.replace("-", "_"): (k, v) for k, v in data.items()},
                **{k.replace("-", "_"): (k, v) for k, v in table.items()}}
        data = dict(data.values())
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in allowed or name == "config":
            options = ", ".join(sorted(n.replace("_", "-") for n in allowed if n != "config"))
            raise InputError(f"config file {path}: {key!r} is not an option of 'xraypose {command}' "
                             f"(options: {options})")
        if isinstance(value, dict):
            raise InputError(f"config file {path}: {key!r} must be a value, not a table")
        _check_type(path, key, value, allowed[name])
        out[name] = value
    return out


_TYPES = {bool: "true or false", int: "a whole number", float: "a number", str: "text (in quotes)",
          Path: "a file path (text in quotes)"}


def _check_type(path: Path, key: str, value, param) -> None:
    """Refuse a TOML value of another type than the option's (``true`` for a number, ``1`` for a flag, …);
    ranges are checked with the command line's (:mod:`xraypose.cli.options`)."""
    from xraypose.schema import shown

    kind = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if kind not in _TYPES:
        return
    fits = {bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, (int, float)) and not isinstance(value, bool),
            str: isinstance(value, str), Path: isinstance(value, str)}[kind]
    if not fits:
        raise InputError(f"config file {path}: {key!r} must be {_TYPES[kind]}, got {shown(value)}")


def config_option(command: str):
    """A ``--config`` typer option for ``command``: read the file before the other options, as their defaults."""

    def load(ctx: typer.Context, value: Path | None):
        if value is None or ctx.resilient_parsing:
            return value
        allowed = {p.name: p for p in ctx.command.params if p.param_type_name == "option"}
        settings = read_command_config(value, command, allowed)
        ctx.default_map = {**(ctx.default_map or {}), **settings}
        return value

    return typer.Option(None, "--config", is_eager=True, callback=load,
                        help="TOML file of option values (keys = the long option names, e.g. lr-rot = 0.01); "
                             "options on the command line win.")
