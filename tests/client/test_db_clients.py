"""tpemu.client.db: the CLI client ``tpemu db connect`` runs for each protocol, and what a user
without it is told (found walking ``make run`` on a fresh machine: the message named no package)."""

from __future__ import annotations

import shutil

import pytest

from tpemu.client import db


@pytest.mark.parametrize(("protocol", "hint"), [("postgres", "apt-get install postgresql-client"),
                                                ("mysql", "apt-get install mariadb-client"),
                                                ("mongodb", "npm install -g mongosh"),
                                                ("redis", "apt-get install redis-tools")])
def test_a_missing_client_names_what_to_install(monkeypatch: pytest.MonkeyPatch, protocol: str, hint: str) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(db.DBError) as err:
        db.client_binary(protocol)
    text = str(err.value)
    assert text.startswith(f"no {db.CLIENTS[protocol][0]}") and hint in text and "tpemu proxy db --tunnel" in text


def test_the_first_client_found_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: f"/opt/bin/{name}" if name == "mysql" else None)
    assert db.client_binary("mysql") == "/opt/bin/mysql"  # mariadb first, then mysql
