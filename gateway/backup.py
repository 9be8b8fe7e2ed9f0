"""Where an online backup may be written (`slgw backup`, `POST /api/backup`; issue 11).

A backup path comes from an API client, so it is untrusted input that names a file the
service will replace. Rules (decision, documented in docs/cli.md and docs/security.md):

- backups go only into the backup directory, ``[store] backup_dir`` (default: ``backups``
  beside the database, created on first use with mode 0750); a path outside it, or reaching
  out of it through a symbolic link, is refused;
- no path at all means ``<backup_dir>/slgw-<UTC time>.db``; a given path must be absolute
  (a relative path would be resolved against the service's working directory, not the
  caller's) and contain no NUL byte;
- never the live database, its ``-wal``/``-shm``/``-journal`` companions or a hard link to
  any of them (writing there once silently lost queued commands);
- an existing file is replaced only if it is an earlier slgw backup: an SQLite file with
  ``BACKUP_APP_ID`` as its application id, which `Store.backup` sets in every copy.
"""

from __future__ import annotations

import os
import time

BACKUP_APP_ID = 0x534C4742  # "SLGB" in the SQLite header's application id of every backup
_COMPANIONS = ("", "-wal", "-shm", "-journal")


class BackupRefused(ValueError):
    """The requested backup path is not allowed; the message says what to give instead."""


def default_backup_dir(store_path: str) -> str:
    """``backups`` beside the database file."""
    return os.path.join(os.path.dirname(os.path.abspath(store_path)), "backups")


def is_backup_file(path: str) -> bool:
    """True if `path` is an SQLite file whose header carries BACKUP_APP_ID."""
    try:
        with open(path, "rb") as f:
            head = f.read(72)
    except OSError:
        return False
    return (len(head) == 72 and head[:16] == b"SQLite format 3\x00"
            and int.from_bytes(head[68:72], "big") == BACKUP_APP_ID)


def resolve(requested: str | None, backup_dir: str, store_path: str,
            now: float | None = None) -> str:
    """Return the absolute path a backup may be written to. Raises BackupRefused."""
    configured = bool(backup_dir)
    bdir = os.path.abspath(backup_dir or default_backup_dir(store_path))
    if not os.path.isdir(bdir):
        if configured:
            raise BackupRefused(f"the backup directory [store] backup_dir = {bdir} does not exist "
                                "on the gateway; create it (writable by the service) or change "
                                "[store] backup_dir")
        try:
            os.makedirs(bdir, mode=0o750, exist_ok=True)
        except OSError as exc:
            raise BackupRefused(f"cannot create the backup directory {bdir}: {exc.strerror}; "
                                "set [store] backup_dir to a directory the service can write") from None
    if requested is None or requested == "":
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        requested = os.path.join(bdir, f"slgw-{stamp}.db")
    if not isinstance(requested, str):
        raise BackupRefused("path must be a string")
    if "\x00" in requested:
        raise BackupRefused("path contains a NUL byte")
    hint = f"give an absolute path inside the backup directory {bdir}, or no path"
    if not os.path.isabs(requested):
        raise BackupRefused(f"relative path {requested!r} refused: {hint}")
    path = os.path.normpath(requested)
    real_dir = os.path.realpath(bdir)
    parent = os.path.realpath(os.path.dirname(path))
    if os.path.commonpath([real_dir, parent]) != real_dir or os.path.basename(path) in ("", ".", ".."):
        raise BackupRefused(f"{requested} is outside the backup directory: {hint}")
    if os.path.islink(path):
        raise BackupRefused(f"{requested} is a symbolic link; refused: {hint}")
    target = os.path.join(parent, os.path.basename(path))
    live = os.path.realpath(store_path)
    for suffix in _COMPANIONS:
        other = live + suffix
        if target == other or (os.path.exists(target) and os.path.exists(other)
                               and os.path.samefile(target, other)):
            raise BackupRefused(f"{requested} is the live database{' ' + suffix if suffix else ''}; "
                                f"refused: {hint}")
    if os.path.lexists(target):
        if not os.path.isfile(target):
            raise BackupRefused(f"{requested} exists and is not a regular file: {hint}")
        if not is_backup_file(target):
            raise BackupRefused(f"{requested} exists and is not an slgw backup; it is left "
                                f"untouched: choose a new name, {hint}")
    if not os.path.isdir(parent):
        raise BackupRefused(f"directory {os.path.dirname(requested)} does not exist: {hint}")
    return target
