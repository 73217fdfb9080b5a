"""Issue 16: every file holding a secret is 0600 (the SQLite backend holds the CAs' private keys;
before the fix it was created 0644). Teleport keeps its data directory and backend owner-only
(``lib/backend/lite``: ``os.MkdirAll(path, teleport.PrivateDirMode)``, files 0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tpemu import config
from tpemu.auth.service import AuthService


def secret_files(root: Path) -> list[Path]:
    out = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        head = path.read_bytes()[:64 * 1024]
        if b"PRIVATE KEY" in head or head.startswith(b"SQLite format 3"):
            out.append(path)
    return out


async def test_backend_and_keys_are_owner_only(tmp_path: Path) -> None:
    cfg = config.from_dict({"teleport": {"data_dir": str(tmp_path / "data")},
                            "auth_service": {"listen_addr": "127.0.0.1:0"}})
    old = os.umask(0o022)
    try:
        svc = AuthService(cfg)
        await svc.start()
        await svc.close()
    finally:
        os.umask(old)
    found = secret_files(tmp_path / "data")
    assert any(p.read_bytes().startswith(b"SQLite format 3") for p in found), found
    wide = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in found if p.stat().st_mode & 0o077}
    assert not wide
