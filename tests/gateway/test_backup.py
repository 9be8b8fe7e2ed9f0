"""`POST /api/backup` (and `slgw backup`) against hostile paths (issue 11): only into the
backup directory, never onto the live database or a file that is not an slgw backup."""

from __future__ import annotations

import os
import sqlite3

import aiohttp
import pytest
from coap_peers import AiocoapNode, gateway

from gateway.backup import BACKUP_APP_ID, BackupRefused, is_backup_file, resolve


async def post_backup(gw, body):
    async with aiohttp.ClientSession() as s, s.post(
            f"http://127.0.0.1:{gw.config.api.port}/api/backup", json=body) as r:
        return r.status, await r.json()


async def test_hostile_backup_paths_are_refused_and_change_nothing(tmp_path):
    bdir = tmp_path / "backups"
    bdir.mkdir()
    outside = tmp_path / "notes.txt"
    outside.write_text("the town's notes")
    unrelated = bdir / "readme.txt"
    unrelated.write_text("not a backup")
    (bdir / "b.db.tmp").write_text("someone's file named like the old temporary")
    async with gateway(tmp_path / "gw", store__backup_dir=str(bdir)) as gw:
        live = gw.config.store.path
        node = await AiocoapNode("b1", gw.config.coap.port).start()
        try:
            await node.register()
            await gw.commands.submit("b1", "level", {"level": 40}, wait=5)
        finally:
            await node.stop()
        before = await gw.commands.list(limit=100)
        assert before
        os.symlink(outside, bdir / "link.db")
        os.link(live, bdir / "hardlink.db")
        for path, why in ((str(outside), "outside the backup directory"),
                          (live, "outside the backup directory"),
                          (str(bdir / ".." / "notes.txt"), "outside the backup directory"),
                          (str(unrelated), "not an slgw backup"),
                          ("backups/x.db", "relative"),
                          ("x.db", "relative"),
                          (str(bdir / "x\x00.db"), "NUL"),
                          (str(bdir / "link.db"), "symbolic link"),
                          (str(bdir / "hardlink.db"), "live database"),
                          (str(bdir), "outside the backup directory"),
                          (42, "string")):
            st, body = await post_backup(gw, {"path": path})
            assert st == 400 and why in body["error"]["message"], (path, body)
        assert outside.read_text() == "the town's notes"
        assert unrelated.read_text() == "not a backup"
        assert (await gw.commands.list(limit=100)) == before  # nothing lost

        st, body = await post_backup(gw, {"path": str(bdir / "b.db")})
        assert st == 200 and body["path"] == str(bdir / "b.db") and body["bytes"] > 0
        assert (bdir / "b.db.tmp").read_text().startswith("someone's")  # not clobbered
        assert is_backup_file(str(bdir / "b.db"))
        con = sqlite3.connect(bdir / "b.db")
        assert con.execute("PRAGMA application_id").fetchone()[0] == BACKUP_APP_ID
        assert con.execute("SELECT COUNT(*) FROM commands").fetchone()[0] == len(before)
        con.close()
        st, body = await post_backup(gw, {"path": str(bdir / "b.db")})  # an earlier backup: replaced
        assert st == 200
        st, body = await post_backup(gw, {})  # no path: a new timestamped file in the directory
        assert st == 200 and os.path.dirname(body["path"]) == str(bdir)
        assert os.path.basename(body["path"]).startswith("slgw-")
        assert sorted(p for p in os.listdir(bdir) if p.endswith(".tmp")) == ["b.db.tmp"]


def test_default_directory_is_beside_the_database(tmp_path):
    store = tmp_path / "slgw.db"
    sqlite3.connect(store).close()
    p = resolve(None, "", str(store), now=0)
    assert p == str(tmp_path / "backups" / "slgw-19700101T000000Z.db")
    assert (tmp_path / "backups").is_dir() and (tmp_path / "backups").stat().st_mode & 0o777 == 0o750
    with pytest.raises(BackupRefused, match="does not exist"):
        resolve(None, str(tmp_path / "missing"), str(store))
    with pytest.raises(BackupRefused, match="live database -wal"):
        resolve(str(tmp_path / "slgw.db-wal"), str(tmp_path), str(store))
    with pytest.raises(BackupRefused, match="is the live database;"):
        resolve(str(store), str(tmp_path), str(store))
