"""The gateway's OSCORE keys on disk (RFC 8613; docs/security.md, SPEC "OSCORE"): import,
list, remove, and the permission check run at start-up.

Layout: one directory per node under the keys directory (``[coap] keys_dir``), named after the
node's endpoint, in the layout of aiocoap's FilesystemSecurityContext:

    <keys_dir>/            0700
      <ep>/                0700
        secret.json        0600  {"secret_hex": master secret, "salt_hex": master salt}
        settings.json      0600  sender/recipient ids, algorithm, KDF, and "endpoint_ascii"
        sequence.json      0600  written by aiocoap: sender sequence number bound, replay window
        lock                     aiocoap's lock file (one process per context)

The gateway's Sender ID is the context's sender id (0x00), the node's Sender ID its recipient
id (the kid of the node's requests). Secrets are never returned by anything here except
`load_key_file` (for the import itself); `list_keys` reads settings.json only.

A key file written by ``slnode provision`` (``<ep>.oscore.json``, the contract in SPEC
"OSCORE") is what ``slgw keys import`` takes.
"""

from __future__ import annotations

import binascii
import json
import os
import re
import shutil
import stat
import tempfile
from typing import Any

ALG = "AES-CCM-16-64-128"
HKDF = "sha256"
EP_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,62}$")  # the wire's ep rule, no leading dot
SECRET_FILES = ("secret.json", "settings.json", "sequence.json")
MAX_ID_LEN = 7  # AES-CCM-16-64-128: nonce 13 bytes - 6 (RFC 8613 §5.2)


class KeyFileError(ValueError):
    """A key file or key directory that cannot be used; the message says what to do."""


class PermissionProblem(KeyFileError):
    """The keys directory or a file in it is open to group/other or owned by someone else."""


def default_keys_dir(store_path: str) -> str:
    """``[coap] keys_dir`` left empty: ``keys`` beside the database."""
    return os.path.join(os.path.dirname(os.path.abspath(store_path)), "keys")


def _hex(doc: dict[str, Any], key: str, sizes: tuple[int, ...], where: str) -> bytes:
    v = doc.get(key)
    if not isinstance(v, str):
        raise KeyFileError(f"{where}: '{key}' is missing (hex string expected)")
    try:
        b = binascii.unhexlify(v)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{where}: '{key}' is not hex") from None
    if len(b) not in sizes:
        raise KeyFileError(f"{where}: '{key}' must be {' or '.join(map(str, sizes))} bytes, not {len(b)}")
    return b


def load_key_file(path: str) -> dict[str, Any]:
    """Read and check one ``<ep>.oscore.json``; return {ep, secret, salt, node_sid, gw_sid}.

    Raises KeyFileError naming the file and the field (never echoing a secret value).
    """
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError(f"{path}: not a JSON key file from `slnode provision`") from None
    if not isinstance(doc, dict):
        raise KeyFileError(f"{path}: not a JSON object")
    ep = doc.get("ep")
    if not isinstance(ep, str) or not EP_RE.match(ep):
        raise KeyFileError(f"{path}: 'ep' must be a node name of 1-63 [A-Za-z0-9._-], not "
                        "starting with a dot")
    if doc.get("alg", ALG) != ALG:
        raise KeyFileError(f"{path}: alg {doc.get('alg')!r} is not supported; use {ALG}")
    if doc.get("hkdf", HKDF) != HKDF:
        raise KeyFileError(f"{path}: hkdf {doc.get('hkdf')!r} is not supported; use {HKDF}")
    out = {
        "ep": ep,
        "secret": _hex(doc, "master_secret_hex", (16,), path),
        "salt": _hex(doc, "master_salt_hex", (8,), path),
        "node_sid": _hex(doc, "node_sender_id_hex", tuple(range(1, MAX_ID_LEN + 1)), path),
        "gw_sid": _hex(doc, "gateway_sender_id_hex", tuple(range(0, MAX_ID_LEN + 1)), path),
    }
    if out["node_sid"] == out["gw_sid"]:
        raise KeyFileError(f"{path}: the node's and the gateway's Sender IDs must differ")
    return out


def _write_private(path: str, doc: dict[str, Any]) -> None:
    """Write JSON atomically with mode 0600 (mkstemp creates 0600)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def ensure_dir(keys_dir: str) -> None:
    """Create the keys directory (0700) if missing, owned like the directory holding it (root
    importing into the service's state directory must leave the keys to the service's user)."""
    if os.path.isdir(keys_dir):
        return
    os.makedirs(keys_dir, mode=0o700, exist_ok=True)
    os.chmod(keys_dir, 0o700)  # makedirs' mode is masked by the umask
    _adopt_owner(keys_dir, os.path.dirname(os.path.abspath(keys_dir)))


def _adopt_owner(path: str, like: str) -> None:
    """As root, give `path` (recursively) the owner of `like`; a no-op for other users."""
    if os.geteuid() != 0:
        return
    st = os.stat(like)
    if st.st_uid == 0:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, st.st_uid, st.st_gid)
        for n in dirs + files:
            os.chown(os.path.join(root, n), st.st_uid, st.st_gid)


ROTATE_PREFIX = ".rotate-"  # a key being rotated in (SPEC §10.5); hidden from context_dirs
CONFIRMED = "confirmed"      # marker file: the node answered 2.04 to its new key


def rotation_dir(keys_dir: str, ep: str) -> str:
    """Where a node's next key waits until the node first uses it."""
    return os.path.join(keys_dir, ROTATE_PREFIX + ep)


def write_context(keys_dir: str, key: dict[str, Any], final: str | None = None) -> str:
    """Write one node's context directory (replacing none: the caller removed an old one) at
    `final` (default `<keys_dir>/<ep>`). Returns its path."""
    ensure_dir(keys_dir)
    final = final or os.path.join(keys_dir, key["ep"])
    tmpdir = tempfile.mkdtemp(dir=keys_dir, prefix=".new-")  # 0700
    _write_private(os.path.join(tmpdir, "secret.json"),
                   {"secret_hex": key["secret"].hex(), "salt_hex": key["salt"].hex()})
    _write_private(os.path.join(tmpdir, "settings.json"), {
        "sender-id_hex": key["gw_sid"].hex(), "recipient-id_hex": key["node_sid"].hex(),
        "algorithm": ALG, "kdf-hashfun": HKDF, "endpoint_ascii": key["ep"]})
    _adopt_owner(tmpdir, keys_dir)
    os.replace(tmpdir, final)  # one rename: the gateway never sees half a context
    return final


def read_settings(ctx_dir: str) -> dict[str, Any] | None:
    """The non-secret settings of one context directory, or None if it is not one."""
    try:
        with open(os.path.join(ctx_dir, "settings.json"), encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def context_dirs(keys_dir: str) -> dict[str, str]:
    """{endpoint: directory} of every installed context (temporary entries skipped)."""
    out: dict[str, str] = {}
    try:
        names = sorted(os.listdir(keys_dir))
    except FileNotFoundError:
        return out
    for name in names:
        path = os.path.join(keys_dir, name)
        if name.startswith(".") or not os.path.isdir(path):
            continue
        if os.path.exists(os.path.join(path, "secret.json")):
            out[name] = path
    return out


def list_keys(keys_dir: str) -> list[dict[str, Any]]:
    """One entry per node: endpoint, node and gateway Sender IDs (hex), algorithm, and the
    persisted sender sequence bound. No secret."""
    out = []
    for ep, path in context_dirs(keys_dir).items():
        s = read_settings(path) or {}
        entry: dict[str, Any] = {"node": ep, "node_sender_id": s.get("recipient-id_hex"),
                                 "gateway_sender_id": s.get("sender-id_hex"),
                                 "alg": s.get("algorithm", ALG), "next_sequence_number": None}
        try:
            with open(os.path.join(path, "sequence.json"), encoding="utf-8") as f:
                entry["next_sequence_number"] = int(json.load(f)["next-to-send"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        out.append(entry)
    return out


def import_key(keys_dir: str, key: dict[str, Any], replace: bool = False) -> str:
    """Install one checked key (from load_key_file). Returns "added", "replaced" or
    "unchanged".

    Raises KeyFileError when the node's Sender ID is already another endpoint's (the kid must name
    one node), or when the endpoint has a different key and `replace` is False.
    """
    installed = context_dirs(keys_dir)
    for ep, path in installed.items():
        s = read_settings(path) or {}
        if ep != key["ep"] and s.get("recipient-id_hex") == key["node_sid"].hex():
            raise KeyFileError(f"node Sender ID {key['node_sid'].hex()} is already used by {ep}; "
                            f"provision {key['ep']} again (slnode provision makes a new one)")
    old = installed.get(key["ep"])
    if old is not None:
        with open(os.path.join(old, "secret.json"), encoding="utf-8") as f:
            sec = json.load(f)
        s = read_settings(old) or {}
        same = (sec.get("secret_hex") == key["secret"].hex() and sec.get("salt_hex") == key["salt"].hex()
                and s.get("recipient-id_hex") == key["node_sid"].hex()
                and s.get("sender-id_hex") == key["gw_sid"].hex())
        if same:
            return "unchanged"
        if not replace:
            raise KeyFileError(f"{key['ep']} already has a different key; use --replace to install "
                            "this one (the node must have been provisioned with it)")
        remove_key(keys_dir, key["ep"])
        write_context(keys_dir, key)
        return "replaced"
    write_context(keys_dir, key)
    return "added"


def remove_key(keys_dir: str, ep: str) -> bool:
    """Delete one node's context (and a key being rotated in); return False if it had none."""
    path = context_dirs(keys_dir).get(ep)
    if path is None:
        return False
    pending = rotation_dir(keys_dir, ep)
    if os.path.isdir(pending):
        _discard(keys_dir, pending)
    _discard(keys_dir, path)
    return True


def _discard(keys_dir: str, path: str) -> None:
    # rename first, so a running gateway never loads a half-deleted directory
    tmp = tempfile.mkdtemp(dir=keys_dir, prefix=".old-")
    os.replace(path, os.path.join(tmp, "ctx"))
    shutil.rmtree(tmp)


def promote_rotation(keys_dir: str, ep: str) -> str:
    """The node used its new key: the rotated-in context becomes `<keys_dir>/<ep>` and the old
    one is deleted. Returns the path."""
    final = os.path.join(keys_dir, ep)
    if os.path.isdir(final):
        _discard(keys_dir, final)
    os.replace(rotation_dir(keys_dir, ep), final)
    marker = os.path.join(final, CONFIRMED)
    if os.path.exists(marker):
        os.unlink(marker)
    return final


def used_sender_ids(keys_dir: str) -> set[str]:
    """Every node Sender ID (hex) installed or being rotated in."""
    out = set()
    for path in list(context_dirs(keys_dir).values()) + [
            os.path.join(keys_dir, n) for n in _names(keys_dir) if n.startswith(ROTATE_PREFIX)]:
        s = read_settings(path) or {}
        if s.get("recipient-id_hex"):
            out.add(s["recipient-id_hex"])
    return out


def _names(keys_dir: str) -> list[str]:
    try:
        return os.listdir(keys_dir)
    except FileNotFoundError:
        return []


def check_permissions(keys_dir: str) -> None:
    """Refuse keys that group or other could read, or that another user owns.

    Raises PermissionProblem with the chmod/chown command that fixes it.
    """
    uid = os.geteuid()
    user = _user_name(uid)
    fix_mode = f"chmod -R go-rwx {keys_dir}"
    fix_owner = f"chown -R {user} {keys_dir}"
    entries = [keys_dir]
    dirs = list(context_dirs(keys_dir).values()) + [
        os.path.join(keys_dir, n) for n in _names(keys_dir) if n.startswith(ROTATE_PREFIX)]
    for path in dirs:
        entries.append(path)
        entries += [os.path.join(path, n) for n in SECRET_FILES
                    if os.path.exists(os.path.join(path, n))]
    for path in entries:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise PermissionProblem(f"{path} is a symbolic link; keys must be plain files in "
                                    f"{keys_dir}")
        if st.st_uid != uid:
            raise PermissionProblem(f"{path} is owned by uid {st.st_uid}, not by the gateway's "
                                    f"user {user}; run `{fix_owner}`")
        if st.st_mode & 0o077:
            raise PermissionProblem(f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: group or "
                                    f"other can reach the node keys; run `{fix_mode}`")


def _user_name(uid: int) -> str:
    try:
        import pwd
        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)
