"""tpemu's one error model: every exception tpemu raises on purpose is a :class:`TpemuError`.

Two kinds, as a user has to act on them differently:

* :class:`PeerFault`: the other side broke its protocol, refused, answered with an error, or could
  not be reached (a malformed ClientHello, a 403 from the Auth API, a refused dial). Exit code 1.
* :class:`LocalFault`: this side is wrong (a bad ``teleport.yaml``, a bad flag, a missing profile,
  a capture file that is not a pcap). Exit code 2, the code argparse uses for a usage error.

Each error carries a message for a human (``str(exc)``) and an exit code (``exit_code``, per class
and overridable per instance), the way asyncssh's ``asyncssh.Error`` carries ``code`` and
``reason``. Module-specific classes keep their names and their older bases (``ValueError``,
``OSError``), so existing ``except`` clauses still match; they gain one root so that one ``except
TpemuError`` (the CLI's ``main``, an embedding test suite) catches every expected failure, and
anything else is a bug with a traceback.

:func:`describe` is the one exception-to-text helper: it replaces five private copies (the SSH
client and proxy, the SSH and database services, kube exec) and speaks Teleport's Go words where
Teleport's troubleshooting guide quotes them (:mod:`tpemu.net.go_tls_errors`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

# No other imports at module level: every layer raises these, tpemu.wire included (it may import
# nothing outside itself but this leaf; tests/test_layout.py), so describe() imports what it reads.

__all__ = ["EXIT_LOCAL", "EXIT_PEER", "LocalFault", "PeerFault", "TpemuError", "describe", "exit_code"]

#: The exit code of a peer fault (the other side, or the network).
EXIT_PEER = 1
#: The exit code of a local fault (configuration, usage, local files): argparse's usage code.
EXIT_LOCAL = 2


class TpemuError(Exception):
    """The root of every error tpemu raises on purpose. ``fault`` says whose fault it is
    (``"peer"`` or ``"local"``); ``exit_code`` is what the CLI exits with."""

    fault: ClassVar[Literal["peer", "local"]] = "local"
    exit_code: int = EXIT_LOCAL


class PeerFault(TpemuError):
    """The peer (a client, a server, an agent, the network) broke the protocol, refused, or failed."""

    fault: ClassVar[Literal["peer", "local"]] = "peer"
    exit_code: int = EXIT_PEER


class LocalFault(TpemuError):
    """This side is at fault: configuration, arguments, local files, the local environment."""

    fault: ClassVar[Literal["peer", "local"]] = "local"
    exit_code: int = EXIT_LOCAL


def exit_code(exc: BaseException) -> int:
    """The exit code for ``exc``: its own for a :class:`TpemuError`, else 1."""
    code = getattr(exc, "exit_code", None) if isinstance(exc, TpemuError) else None
    return code if isinstance(code, int) else EXIT_PEER


def describe(exc: BaseException) -> str:
    """One line for a log or a peer: why ``exc`` happened, without a traceback.

    Teleport's Go words first where its guide quotes them ("read: connection reset by peer",
    "tls: first record does not look like a TLS handshake"), then the certificate-verify reason, an
    SSH error's reason (a disconnect, a refused channel), "timed out", an ``OSError``'s
    ``strerror`` (without the ``[Errno n]`` prefix), else the message, else the class name.
    """
    import asyncio
    import ssl

    from tpemu.net import go_tls_errors

    if isinstance(exc, TpemuError):
        return str(exc) or type(exc).__name__
    go = go_tls_errors.describe(exc)
    if go is not None:
        return go
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    reason = _ssh_reason(exc)
    if reason is not None:
        return reason or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the peer closed the connection"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _ssh_reason(exc: BaseException) -> str | None:
    # asyncssh.Error (a disconnect, a refused channel open) carries ``code`` and ``reason``. asyncssh
    # is a dependency, but this module is imported by code that never uses SSH: the import waits
    # for an exception that comes from asyncssh.
    if type(exc).__module__.split(".")[0] != "asyncssh":
        return None
    import asyncssh

    if isinstance(exc, asyncssh.Error):
        return str(exc.reason or "")
    return None
