"""``rlhfkit`` command line: one subcommand per stage, each a thin shell over a library function.

Subcommands import their implementation lazily so that ``rlhfkit --help`` and the annotation app stay light.
User errors (bad config key, malformed data row, a folder that is not a model) print one sentence and exit
with status 2; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, function, help). The function takes the parsed argparse namespace.
COMMANDS: dict[str, tuple[str, str, str]] = {}


def command(name: str, target: str, help: str):
    module, _, func = target.partition(":")
    COMMANDS[name] = (module, func, help)


def _user_error_types() -> tuple[type[BaseException], ...]:
    from rlhfkit.errors import UserError

    return (UserError,)


def _add_stage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML recipe (see configs/); key=value arguments override it")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=3e-4")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhfkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, func, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure = getattr(importlib.import_module(module), f"configure_{func}", None)
        if configure is not None:
            configure(p)
        else:
            _add_stage_args(p)
        p.set_defaults(_target=(module, func))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_target", None):
        parser.print_help()
        return 2
    module, func = args._target
    user_errors = _user_error_types()
    try:
        result = getattr(importlib.import_module(module), func)(args)
    except user_errors as exc:
        print(f"rlhfkit {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rlhfkit {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
