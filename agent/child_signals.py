"""The signal state a session's process starts with: every disposition at its default, none blocked.

Shared by the SSH Service's sessions (:mod:`tpemu.agent.ssh_session`) and the emulated pods' exec
(:mod:`tpemu.agent.kube.exec`). POSIX ``execve`` resets only *caught* signals; an ignored one
(``SIG_IGN``: SIGINT when tpemu was started in the background by a non-interactive shell) and the
blocked mask are inherited, and a POSIX shell cannot trap a signal ignored on entry. sshd resets its
handlers in the child after ``fork``; so does this module's hook. libuv's spawn (uvloop) resets
signals 1-31 and the mask itself, but not the real-time ones.
"""

from __future__ import annotations

import contextlib
import importlib
import signal
from typing import Any

#: The C module behind :mod:`signal`, whose wrappers turn every number into an enum member
#: (``valid_signals``, ``getsignal``: 128 conversions per check, a third of its cost).
_c_signal: Any = importlib.import_module("_signal")

#: Signals whose disposition cannot be changed (and need no reset).
FIXED_SIGNALS = {signal.SIGKILL, signal.SIGSTOP}

#: What ``subprocess`` resets in the child itself (``restore_signals=True``: Python ignores them).
RESTORED_SIGNALS = {getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)}


def default_signals() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Every signal to ``SIG_DFL`` and the mask emptied (a ``preexec_fn``)."""
    for sig in signal.valid_signals():
        if sig not in FIXED_SIGNALS:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def exec_gives_default_signals() -> bool:
    """Whether a child exec'd from this thread starts as :func:`default_signals` would leave it,
    without running that hook: no signal blocked in this thread, none ignored (exec resets caught
    signals to their default; ``restore_signals`` resets the ones Python ignores).

    Why it matters: a ``preexec_fn`` makes ``subprocess`` fork (copy the page tables of this
    whole process: ~9 ms at 136 MB RSS here) instead of vfork (~0.15 ms), on every session.
    """
    if signal.pthread_sigmask(signal.SIG_BLOCK, ()):
        return False
    ignored = int(signal.SIG_IGN)
    for sig in _c_signal.valid_signals():
        if sig in FIXED_SIGNALS or sig in RESTORED_SIGNALS:
            continue
        try:
            if _c_signal.getsignal(sig) == ignored:
                return False
        except (OSError, ValueError):
            continue
    return True
