"""What every command group of the CLI shares: the error type, config loading, the event loop,
the profile folder, and :func:`command` (a sub-parser with examples in its ``--help``)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from tpemu import config as config_mod
from tpemu.config import Config
from tpemu.errors import TpemuError

#: The object ``add_subparsers()`` returns (argparse keeps its class private).
Subparsers = Any


class CLIError(TpemuError):
    """A command cannot do what was asked; the message is for the user, ``code`` the exit code
    (also ``exit_code``, as for every :class:`tpemu.errors.TpemuError`)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = self.exit_code = code


def examples(*lines: str) -> str:
    """An ``epilog`` listing example invocations."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def command(sub: Subparsers, name: str, help: str, example: tuple[str, ...] = (),
            **kwargs: Any) -> argparse.ArgumentParser:
    """``sub.add_parser`` with ``help`` as the description too and ``example`` lines in the epilog."""
    kwargs.setdefault("description", help[:1].upper() + help[1:] + ".")
    if example:
        kwargs["epilog"] = examples(*example)
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    return parser


def load_config(path: str | None, data_dir: str | None) -> tuple[Config, list[str]]:
    """The config from ``path`` (or defaults), with ``--data-dir`` applied; plus the warnings to
    log at start-up (Teleport keys not emulated, tpemu keys in their deprecated place)."""
    import yaml

    ignored: list[str] = []
    if path:
        cfg = config_mod.load(path)
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            raw = None
        ignored = [f"config key {key} is accepted for compatibility but not emulated by tpemu"
                   for key in config_mod.ignored_keys(raw)]
        # The file loads, but Teleport's strict parser would refuse it: say so at start-up.
        ignored += [f"config key {old} is deprecated: tpemu-only keys live under tpemu: now, write it as "
                    f"{new} (Teleport refuses unknown keys in its own sections)"
                    for old, new in config_mod.moved_keys(raw)]
    else:
        cfg = Config()
    if data_dir:
        cfg = dataclasses.replace(cfg, teleport=dataclasses.replace(cfg.teleport, data_dir=data_dir))
    return cfg, ignored


def run_loop(coro_fn: Callable[[], Coroutine[Any, Any, int]], loop_name: str = "uvloop") -> int:
    if loop_name == "uvloop":
        import uvloop

        from tpemu.net.transport_registry import new_uvloop

        return uvloop.run(coro_fn(), loop_factory=new_uvloop)
    return asyncio.run(coro_fn())


def default_ca() -> Path | None:
    """The local cluster CA (``<data_dir>/pki/ca.crt``) when this host runs the Auth Service."""
    path = Config().data_dir() / "pki" / "ca.crt"
    return path if path.exists() else None


def home(args: argparse.Namespace) -> Path:
    """The profile folder: ``--home``, else ``$TPEMU_HOME`` or ``~/.tpemu``."""
    from tpemu.client.profile import default_home

    return Path(args.home).expanduser() if args.home else default_home()


def duration(text: str, flag: str) -> float:
    try:
        value = config_mod.parse_duration(text)
    except ValueError as exc:
        raise CLIError(f"{flag}: {exc}", 2) from None
    if value <= 0:
        raise CLIError(f"{flag}: must be positive", 2)
    return value


def csv(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def proxy_kinds(sub: Subparsers) -> Subparsers:
    """The sub-commands of ``tpemu proxy`` (``ssh``, ``db``: like ``tsh proxy``), made on first use."""
    group = sub.choices.get("proxy")
    if group is None:
        group = command(sub, "proxy", "local proxies through the Teleport proxy (like tsh proxy: ssh, db)",
                        ("tpemu proxy ssh root@node1:3022", "tpemu proxy db --tunnel pg --port 5433"))
        group.set_defaults(proxy_kinds=group.add_subparsers(metavar="KIND", help="what to proxy: ssh or db"))
    return group.get_default("proxy_kinds")
