"""The ``tpemu`` command line (glue): one module per command group, registered on one parser.

Configures logging (the only place that does, in :mod:`tpemu.cli.server`), picks the event loop
(uvloop unless ``--loop asyncio``) and turns every expected failure (a
:class:`tpemu.errors.TpemuError`) into one clear line on stderr and its exit code; tracebacks are
for bugs only.

Adding a command group: create ``tpemu/cli/<group>.py`` with ``ORDER = <int>`` (its place in
``tpemu --help``) and ``register(sub)``, which adds its sub-commands with
:func:`tpemu.cli.common.command` (that helper puts the examples into ``--help``). Modules are
found by scanning this package, so no central list needs editing (and no merge conflict arises).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from tpemu import TELEPORT_VERSION, __version__
from tpemu.cli.common import CLIError, examples
from tpemu.config import ConfigError
from tpemu.errors import TpemuError, exit_code
from tpemu.errors import describe as describe_error

__all__ = ["CLIError", "build_parser", "main"]

_EXAMPLES = examples(
    "tpemu start                                   # an all-in-one cluster on 127.0.0.1:3080",
    "tpemu users add alice --logins root --db-users alice",
    "tpemu login --proxy 127.0.0.1:3080 --user alice --insecure",
    "tpemu ssh root@node1 uname -a",
    "tpemu db connect pg -- -c 'select 1'",
    "tpemu inspect 16030100...                     # how would these first bytes be routed?",
)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after "bench" belongs to the suite's own parser
        from tpemu.cli.bench import cmd_bench

        return cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    # Arguments after "--" belong to the program a command runs (tpemu db connect NAME -- -c "…");
    # argparse does not hand them to a positional of a nested subcommand, so they are split here.
    # `tpemu ssh` keeps its own: everything after the node is the remote command.
    passthrough: list[str] = []
    if "--" in argv and argv[:1] != ["ssh"]:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.passthrough = passthrough
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        print(f"tpemu: config error: {exc}", file=sys.stderr)
        return exc.exit_code
    except TpemuError as exc:
        # Every expected failure (tpemu.errors): one line, and the error's exit code
        # (2 for a local fault, 1 for a peer fault, or the command's own).
        print(f"tpemu: {describe_error(exc)}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130


def command_groups() -> list[ModuleType]:
    """Every module of this package with a ``register(sub)``, in ``ORDER`` (then name) order."""
    mods = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "common":
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        if callable(getattr(mod, "register", None)):
            mods.append(mod)
    return sorted(mods, key=lambda m: (getattr(m, "ORDER", 1000), m.__name__))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tpemu", description="Teleport networking emulator", epilog=_EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"tpemu {__version__} (Teleport {TELEPORT_VERSION})")
    sub = p.add_subparsers(metavar="COMMAND", help="what to do (tpemu COMMAND --help shows its options and examples)")
    for mod in command_groups():
        mod.register(sub)
    return p
