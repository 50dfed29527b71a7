"""The command line's argument parser: one-line errors, defaults in --help, `-v` anywhere.

argparse prints the whole usage (19 lines for `generate`) before a mistyped flag's message; here a
parse error is one line on stderr naming the flag, what it accepts, and the `--help` to read, then
exit status 2, like every other bad input of the CLI::

    error: --steps takes an integer, got 'abc' (see `gligen-rt generate --help`)
    error: unknown flag --stepz: did you mean --steps? (see `gligen-rt generate --help`)

argparse itself is kept (a well-kept library that already knows every flag); only its `error`
and help formatter are specialised.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

# The names --model takes (see add_model_args in gligen_rt/cli.py for what each stands for).
MODEL_NAMES = ("tiny", "tiny-random", "sd14")

_TYPE_WORDS = {"int": "an integer", "float": "a number", "Path": "a path", "_csv": "a comma-separated list"}


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to every option that has a help text and a meaningful default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or "default" in text.lower()
            or not action.option_strings
            or default is None
            or default is False
            or default == argparse.SUPPRESS
            or (isinstance(default, (list, tuple)) and not default)
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit status 2 (subparsers inherit it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        fail(self, explain(self, message))

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:  # name the subcommand whose flags were meant, and the nearest known flag
            target = _chosen_subparser(self, parsed) or self
            fail(target, unknown_flags(target, extras))
        return parsed


def fail(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    line = " ".join(message.split())
    sys.stderr.write(f"error: {line} (see `{parser.prog} --help`)\n")
    sys.exit(2)


def _chosen_subparser(parser: argparse.ArgumentParser, parsed: argparse.Namespace) -> Any:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            name = getattr(parsed, action.dest or "", None)
            return action.choices.get(name) if name else None
    return None


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [s for a in parser._actions for s in a.option_strings]


def unknown_flags(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    flags = [e for e in extras if e.startswith("-")]
    if not flags:
        return f"unexpected argument {' '.join(extras)!r}: values belong after a flag"
    first = flags[0].split("=", 1)[0]
    close = difflib.get_close_matches(first, _option_strings(parser), n=1, cutoff=0.6)
    hint = f": did you mean {close[0]}?" if close else ""
    more = f" (and {', '.join(flags[1:])})" if len(flags) > 1 else ""
    return f"unknown flag {first}{more}{hint}"


def _action_for(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    for action in parser._actions:
        if flag in action.option_strings or flag == action.dest or flag == action.metavar:
            return action
    return None


def explain(parser: argparse.ArgumentParser, message: str) -> str:
    """argparse's message, rewritten to say which flag, what it accepts and what it got."""
    m = re.match(r"argument (\S+?): invalid (\w+) value: (.*)$", message)
    if m:
        flag, kind, got = m.groups()
        return f"{_flag(flag)} takes {_TYPE_WORDS.get(kind, kind)}, got {got}"
    m = re.match(r"argument (\S+?): invalid choice: ('[^']*'|\S+)(?: \(choose from (.*)\))?", message)
    if m:
        flag, got, _ = m.groups()
        action = _action_for(parser, flag)
        choices = list(action.choices) if action is not None and action.choices else []
        if action is not None and isinstance(action, argparse._SubParsersAction):
            return f"unknown command {got}: choose one of {', '.join(choices)}"
        return f"{_flag(flag)} {got} is not one of: {', '.join(map(str, choices))}"
    m = re.match(r"argument (\S+?): expected (.*) arguments?", message)
    if m:
        flag = _flag(m.group(1))
        action = _action_for(parser, flag)
        what = f" ({action.help})" if action is not None and action.help else ""
        return f"{flag} needs a value{what}"
    m = re.match(r"argument (\S+?): not allowed with argument (\S+)", message)
    if m:
        return f"{_flag(m.group(1))} and {_flag(m.group(2))} exclude each other: give one of them"
    m = re.match(r"the following arguments are required: (.*)", message)
    if m:
        return f"missing {m.group(1)}"
    m = re.match(r"unrecognized arguments: (.*)", message)
    if m:
        return unknown_flags(parser, m.group(1).split())
    m = re.match(r"argument (\S+?): (.*)", message)  # a type function's own message
    if m:
        return f"{_flag(m.group(1))}: {m.group(2)}"
    return message


def _flag(name: str) -> str:
    """argparse names an option by all its strings ("-v/--verbose"): keep the long one."""
    return name.split("/")[-1]


def add_verbose(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """`-v` before or after the subcommand: the top parser sets the default, subparsers only override."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="debug output (the full request, timings per stage)",
    )


def checkpoint_path(text: str) -> Path:
    """--checkpoint's type for every subcommand: a file or folder; a model name is refused, so
    `--checkpoint NAME` has one meaning everywhere (use --model NAME)."""
    if text in MODEL_NAMES and not os.path.exists(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is a model name, not a checkpoint file or folder: use --model {text}"
        )
    return Path(text)
