"""The ``tokenkit`` command.

Each subcommand is one small function decorated with :func:`command`: it adds its arguments to
its own parser and returns the function that runs it. Heavy modules (training, evaluation, the
Hub) are imported inside that function, only when the subcommand runs, so ``tokenkit --version``
and ``tokenkit quantizers`` stay fast. Adding a subcommand::

    @command("train", help="train a tokenizer from a config file")
    def _train(parser: argparse.ArgumentParser) -> Runner:
        parser.add_argument("config")
        return lazy("tokenkit.train.cli", "run")   # run(args) -> exit code

Errors a user can fix (an unknown name, a bad option, a missing file) print one line on stderr
and exit with status 1; ``--traceback`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence

Runner = Callable[[argparse.Namespace], "int | None"]
Configure = Callable[[argparse.ArgumentParser], Runner]

_COMMANDS: list[tuple[str, str, Configure]] = []
_FORWARDED: dict[str, str] = {}


def command(name: str, help: str) -> Callable[[Configure], Configure]:
    """Register ``configure(parser) -> runner`` as subcommand ``name``."""

    def register(configure: Configure) -> Configure:
        if any(existing == name for existing, _, _ in _COMMANDS):
            raise ValueError(f"tokenkit subcommand {name!r} is defined twice")
        _COMMANDS.append((name, help, configure))
        return configure

    return register


def forward(name: str, help: str, target: str) -> None:
    """Subcommand ``name`` whose arguments (``--help`` too) are parsed by ``target`` = "module:function".

    For the modules that own a full command line (training, evaluation, the Hub): ``main`` hands
    them the rest of the command line, and the module is imported only when the subcommand runs.
    """
    _FORWARDED[name] = target

    def configure(parser: argparse.ArgumentParser) -> Runner:
        parser.add_argument("argv", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        return lambda args: _run_forwarded(name, args.argv)

    command(name, help)(configure)


def lazy(module: str, function: str) -> Runner:
    """A runner that imports ``module`` and calls ``module.function(args)`` only when it runs."""

    def run(args: argparse.Namespace) -> int | None:
        return getattr(importlib.import_module(module), function)(args)

    return run


def _run_forwarded(name: str, argv: Sequence[str]) -> int | None:
    module, function = _FORWARDED[name].split(":")
    return getattr(importlib.import_module(module), function)(list(argv))


# -- subcommands -----------------------------------------------------------------------------------
@command("quantizers", help="list installed quantizers (built-in and plugins)")
def _quantizers(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    return run_quantizers


def run_quantizers(args: argparse.Namespace) -> int:
    """One row per name in the ``tokenkit.quantizers`` entry point group; broken plugins show their error."""
    from tokenkit.quantizers import describe

    rows = describe()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows, ["name", "package", "version", "description"]))
    return 0


forward("train", "train a tokenizer from a TOML recipe (--resume continues)", "tokenkit.train.cli:main_train")
forward("eval", "evaluate with the pinned protocol; writes eval.json + pictures", "tokenkit.eval:main_eval")
forward("pretrained", "list the pretrained tokenizers tokenkit.load() knows", "tokenkit.hub:main_pretrained")
forward("download", "download a pretrained tokenizer into the Hub cache", "tokenkit.hub:main_download")
forward("push", "push a saved tokenizer folder to the Hugging Face Hub", "tokenkit.hub:main_push")


# -- the command line ------------------------------------------------------------------------------
def format_table(rows: Sequence[dict[str, str]], columns: Sequence[str]) -> str:
    """Left-aligned plain-text table; the last column is not padded."""
    if not rows:
        return "(none installed)"
    widths = [max(len(col), *(len(_cell(row, col)) for row in rows)) for col in columns[:-1]]
    lines = []
    for cells in [dict(zip(columns, [c.upper() for c in columns], strict=True)), *rows]:
        padded = [_cell(cells, col).ljust(w) for col, w in zip(columns[:-1], widths, strict=True)]
        lines.append("  ".join([*padded, _cell(cells, columns[-1])]).rstrip())
    return "\n".join(lines)


def _cell(row: dict[str, str], column: str) -> str:
    return " ".join(str(row.get(column, "")).split())  # one line per row, even for multi-line errors


def build_parser() -> argparse.ArgumentParser:
    from tokenkit import __version__

    parser = argparse.ArgumentParser(
        prog="tokenkit",
        description="Discrete tokenizers for images and audio: quantizers, training, evaluation, the Hub.",
    )
    parser.add_argument("--version", action="version", version=f"tokenkit {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text, configure in _COMMANDS:
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(run=configure(sub))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tokenkit`` console script and ``python -m tokenkit``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--traceback" in argv[:1]
    rest = argv[1:] if show_traceback else argv
    if rest and rest[0] in _FORWARDED:  # the module parses its own arguments, --help included
        try:
            return int(_run_forwarded(rest[0], rest[1:]) or 0)
        except (LookupError, ValueError, TypeError, OSError) as exc:
            if show_traceback:
                raise
            print(f"tokenkit {rest[0]}: error: {exc}", file=sys.stderr)
            return 1
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args) or 0)
    except (LookupError, ValueError, TypeError, OSError) as exc:
        if args.traceback:
            raise
        print(f"tokenkit {args.command}: error: {exc}", file=sys.stderr)
        return 1
