"""The gateway's OSCORE security contexts at run time (RFC 8613; SPEC "OSCORE", gateway side).

Owns `NodeCredentials`, the credentials map handed to aiocoap both as the server's
credentials (OscoreSiteWrapper finds the context of an incoming request by its kid) and as the
client's (aiocoap's OSCORE transport protects each request to a node with that node's
context). One aiocoap FilesystemSecurityContext per node, loaded from the keys directory
(gateway/coap/keystore.py), so aiocoap persists the sender sequence number and replay state.

Identity: a request unprotected by a known context has no endpoint (`endpoint_of` returns
None); a protected one has exactly the endpoint its context was imported for. aiocoap's site
wrapper still lets unprotected requests through to the resources, so the LwM2M handlers call
`endpoint_of` themselves (gateway/coap/server.py).

Keys imported or removed while the gateway runs (`slgw keys import/remove` write the
directory) are picked up when a request arrives with a kid the gateway does not know and the
directory changed since the last scan: no restart, and no scan per request.

Lookups are dictionaries (kid -> context, endpoint -> context), not aiocoap's linear scan of
the map: a town has thousands of nodes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from aiocoap import oscore
from aiocoap.credentials import CredentialsMap, CredentialsMissingError

from gateway.coap import keystore

log = logging.getLogger("slgw.oscore")


class NodeContext(oscore.FilesystemSecurityContext):
    """aiocoap's file-backed context, labelled with the endpoint it authenticates."""

    def __init__(self, basedir: str, endpoint: str,
                 on_replay: Callable[[NodeContext], None] | None = None):
        super().__init__(basedir)
        self.endpoint = endpoint
        self.authenticated_claims = [endpoint]
        self.on_replay = on_replay

    def unprotect(self, protected_message: Any, request_id: Any = None) -> Any:
        """aiocoap's unprotect; a replay (answered 4.01 by aiocoap) is also reported."""
        try:
            return super().unprotect(protected_message, request_id)
        except oscore.ReplayError:
            if self.on_replay is not None:
                self.on_replay(self)
            raise

    def __repr__(self) -> str:  # never the keys: aiocoap logs contexts at debug level
        return f"<NodeContext {self.endpoint} kid {self.recipient_id.hex()}>"

    def release(self) -> None:
        """Forget this context without writing its state back (its directory was removed or
        replaced by another process: writing there would corrupt the new context)."""
        if self.lockfile is not None:
            self.lockfile.release()
            self.lockfile = None

    def close(self) -> None:
        """Persist the exact sequence number and replay window (a graceful stop), unlock."""
        if self.lockfile is not None:
            self._destroy()


def endpoint_of(remote: Any) -> str | None:
    """The endpoint a request's remote is authenticated as, or None when it is not protected
    by one of the gateway's node contexts."""
    ctx = getattr(remote, "security_context", None)
    return getattr(ctx, "endpoint", None) if isinstance(ctx, NodeContext) else None


def _hostinfo(uri: str) -> str:
    """"host:port" of a coap:// URI, with the default port made explicit."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port or 5683}"


class NodeCredentials(CredentialsMap):
    """Every node's security context, found by kid (server) or by node address (client).

    `endpoint_at(address)` (the registry's) maps a node's registered "host:port" to its
    endpoint, so requests to a node are protected with the context it registered under.
    """

    def __init__(self, keys_dir: str, endpoint_at: Callable[[str], str | None]):
        super().__init__()
        self.keys_dir = keys_dir
        self.endpoint_at = endpoint_at
        self._by_kid: dict[bytes, NodeContext] = {}
        self._by_ep: dict[str, NodeContext] = {}
        self._stamp: dict[str, tuple[int, int]] = {}  # ep -> (inode, mtime) of secret.json
        self._dir_mtime = -1
        self.scans = 0
        self._pending: dict[str, NodeContext] = {}  # ep -> key being rotated in (SPEC §10.5)
        self._confirmed: set[str] = set()  # eps whose node answered 2.04 to its new key
        self.unknown_kid = 0  # protected requests with a kid no node has (answered 4.01)
        self.replays = 0  # protected requests refused by a replay window (answered 4.01)
        self._unknown_logged = self._replay_logged = -1e9

    # --- loading ------------------------------------------------------------------------------
    def load(self) -> int:
        """Check permissions and load every context. Returns how many nodes have keys.

        Raises keystore.PermissionProblem (with the chmod/chown to run) and KeyFileError.
        """
        keystore.ensure_dir(self.keys_dir)
        keystore.check_permissions(self.keys_dir)
        self._scan()
        return len(self._by_ep)

    def _scan(self) -> None:
        self.scans += 1
        try:
            self._dir_mtime = os.stat(self.keys_dir).st_mtime_ns
        except FileNotFoundError:
            self._dir_mtime = -1
        found = keystore.context_dirs(self.keys_dir)
        for ep in list(self._by_ep):
            if ep not in found or self._stamp_of(found[ep]) != self._stamp.get(ep):
                self._drop(ep, "removed" if ep not in found else "replaced")
        for ep in list(self._pending):
            if ep not in self._by_ep or not os.path.isdir(keystore.rotation_dir(self.keys_dir, ep)):
                self._forget_pending(ep)
        for ep, path in found.items():
            if ep in self._by_ep:
                continue
            try:
                ctx = NodeContext(path, ep, self._replayed)
            except Exception as exc:  # a damaged directory must not stop the others
                log.error("OSCORE key of %s in %s cannot be loaded (%s): requests from this node "
                          "are refused 4.01; import its key again with `slgw keys import`",
                          ep, path, exc)
                continue
            other = self._by_kid.get(ctx.recipient_id)
            if other is not None:
                log.error("OSCORE key of %s has the node Sender ID of %s; ignoring it: "
                          "provision %s again", ep, other.endpoint, ep)
                ctx.release()
                continue
            self._by_ep[ep] = ctx
            self._by_kid[ctx.recipient_id] = ctx
            self._stamp[ep] = self._stamp_of(path)
            log.info("OSCORE key loaded for %s (kid %s)", ep, ctx.recipient_id.hex())
        for ep in self._by_ep:
            pending = keystore.rotation_dir(self.keys_dir, ep)
            if ep not in self._pending and os.path.isdir(pending):
                self._load_pending(ep, pending)

    def _load_pending(self, ep: str, path: str) -> None:
        try:
            ctx = NodeContext(path, ep, self._replayed)
        except Exception as exc:
            log.error("the new OSCORE key of %s in %s cannot be loaded (%s); rotate again", ep,
                      path, exc)
            return
        if ctx.recipient_id in self._by_kid:
            ctx.release()
            return
        self._pending[ep] = ctx
        self._by_kid[ctx.recipient_id] = ctx
        if os.path.exists(os.path.join(path, keystore.CONFIRMED)):
            self._confirmed.add(ep)
        log.info("OSCORE key rotation of %s pending: both kids %s and %s accepted until the node "
                 "uses the new one", ep, self._by_ep[ep].recipient_id.hex(), ctx.recipient_id.hex())

    def _forget_pending(self, ep: str) -> None:
        ctx = self._pending.pop(ep)
        self._confirmed.discard(ep)
        if self._by_kid.get(ctx.recipient_id) is ctx:
            del self._by_kid[ctx.recipient_id]
        ctx.release()

    def _replayed(self, ctx: NodeContext) -> None:
        self.replays += 1
        now = time.monotonic()
        if now - self._replay_logged >= 60:  # a replay flood must not flood the journal
            self._replay_logged = now
            log.warning("a protected request under the key of %s was a replay (an old message "
                        "sent again) and was refused 4.01 (%d so far); someone on the network "
                        "may be replaying captured traffic", ctx.endpoint, self.replays)

    def stats(self) -> dict[str, int]:
        """Counters for /api/health: nodes with a key, pending rotations, refusals."""
        return {"keys": len(self._by_ep), "rotations_pending": len(self._pending),
                "unknown_kid": self.unknown_kid, "replays": self.replays}

    @staticmethod
    def _stamp_of(path: str) -> tuple[int, int]:
        try:
            st = os.stat(os.path.join(path, "secret.json"))
        except FileNotFoundError:
            return (0, 0)
        return (st.st_ino, st.st_mtime_ns)

    def _drop(self, ep: str, why: str) -> None:
        if ep in self._pending:
            self._forget_pending(ep)
        ctx = self._by_ep.pop(ep)
        self._stamp.pop(ep, None)
        if self._by_kid.get(ctx.recipient_id) is ctx:
            del self._by_kid[ctx.recipient_id]
        ctx.release()
        log.info("OSCORE key of %s %s: its old context is no longer accepted", ep, why)

    def rescan_if_changed(self) -> bool:
        """Reload when the keys directory changed since the last scan; True if it did."""
        try:
            mtime = os.stat(self.keys_dir).st_mtime_ns
        except FileNotFoundError:
            return False
        if mtime == self._dir_mtime:
            return False
        try:
            keystore.check_permissions(self.keys_dir)
        except keystore.KeyFileError as exc:
            log.error("keys directory changed but is not safe, not loading it: %s", exc)
            self._dir_mtime = mtime
            return False
        self._scan()
        return True

    # --- key rotation (SPEC §10.5) ---------------------------------------------------------
    def begin_rotation(self, ep: str) -> tuple[bytes, bytes, bytes]:
        """Make and store the node's next key; from now on requests under either kid are
        accepted. Returns (master secret, master salt, node Sender ID) for the node.

        Raises KeyError for a node without a key, RuntimeError while a rotation is pending.
        """
        old = self._by_ep[ep]
        if ep in self._pending:
            raise RuntimeError(f"a key rotation of {ep} is already waiting for the node to use "
                               "its new key; it completes at the node's next request")
        used = set(self._by_kid) | {bytes.fromhex(h) for h in keystore.used_sender_ids(self.keys_dir)}
        sid = os.urandom(4)
        while sid in used or sid == old.sender_id:
            sid = os.urandom(4)
        ms, salt = os.urandom(16), os.urandom(8)
        path = keystore.write_context(self.keys_dir, {
            "ep": ep, "secret": ms, "salt": salt, "node_sid": sid, "gw_sid": old.sender_id},
            final=keystore.rotation_dir(self.keys_dir, ep))
        self._load_pending(ep, path)
        return ms, salt, sid

    def confirm_rotation(self, ep: str) -> None:
        """The node answered 2.04 to its new key: it uses only that one from now on, so the
        gateway's requests to it do too (marked on disk for a restart)."""
        path = os.path.join(keystore.rotation_dir(self.keys_dir, ep), keystore.CONFIRMED)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._confirmed.add(ep)

    def abort_rotation(self, ep: str) -> None:
        """The node refused its new key: forget it (the current key stays)."""
        if ep in self._pending:
            self._forget_pending(ep)
        pending = keystore.rotation_dir(self.keys_dir, ep)
        if os.path.isdir(pending):
            keystore._discard(self.keys_dir, pending)

    def pending_rotation(self, ep: str) -> bool:
        return ep in self._pending

    def _promote(self, ep: str) -> NodeContext:
        """The node's first request under its new kid: the new key becomes its only one."""
        new, old = self._pending.pop(ep), self._by_ep.pop(ep)
        self._confirmed.discard(ep)
        for ctx in (new, old):
            if self._by_kid.get(ctx.recipient_id) is ctx:
                del self._by_kid[ctx.recipient_id]
        old.release()
        new.close()  # its sequence number and replay window, for the reloaded context
        path = keystore.promote_rotation(self.keys_dir, ep)
        fresh = NodeContext(path, ep, self._replayed)
        self._by_ep[ep] = fresh
        self._by_kid[fresh.recipient_id] = fresh
        self._stamp[ep] = self._stamp_of(path)
        self._dir_mtime = os.stat(self.keys_dir).st_mtime_ns
        log.info("node %s uses its new OSCORE key (kid %s); its old key (kid %s) is no longer "
                 "accepted", ep, fresh.recipient_id.hex(), old.recipient_id.hex())
        return fresh

    def close(self) -> None:
        """Persist every context's state (graceful stop)."""
        for ctx in list(self._by_ep.values()) + list(self._pending.values()):
            try:
                ctx.close()
            except OSError as exc:
                log.error("could not save the OSCORE sequence state of %s (%s); after the "
                          "restart its requests recover through Echo (RFC 8613 B.1.2)",
                          ctx.endpoint, exc)
        self._by_ep.clear()
        self._by_kid.clear()
        self._pending.clear()

    # --- lookups ------------------------------------------------------------------------------
    def context(self, ep: str) -> NodeContext | None:
        """The context of one endpoint, or None."""
        return self._by_ep.get(ep)

    def endpoints(self) -> list[str]:
        return sorted(self._by_ep)

    def for_address(self, address: str) -> NodeContext | None:
        """The context to protect a request to the node registered at "host:port"."""
        ep = self.endpoint_at(address)
        if ep is None:
            return None
        if ep in self._confirmed:
            return self._pending.get(ep)
        return self._by_ep.get(ep)

    # aiocoap server side (OscoreSiteWrapper)
    def find_oscore(self, unprotected: dict) -> NodeContext:
        """The context of an incoming protected request. Raises KeyError (aiocoap: 4.01)."""
        if unprotected.get(oscore.COSE_KID_CONTEXT) is not None:
            raise KeyError("ID Context is not used by this gateway")
        kid = unprotected.get(oscore.COSE_KID)
        ctx = self._by_kid.get(kid)
        if ctx is None and self.rescan_if_changed():
            ctx = self._by_kid.get(kid)
        if ctx is not None and self._pending.get(ctx.endpoint) is ctx:
            ctx = self._promote(ctx.endpoint)
        if ctx is None:
            self.unknown_kid += 1
            now = time.monotonic()
            if now - self._unknown_logged >= 60:  # a scan must not flood the journal
                self._unknown_logged = now
                log.warning("OSCORE request with unknown kid %s answered 4.01 (%d so far); if it "
                            "is one of our nodes, import its key: slgw keys import <ep>.oscore.json",
                            kid.hex() if isinstance(kid, bytes) else kid, self.unknown_kid)
            raise KeyError(kid)
        return ctx

    def find_all_used_contextless_oscore_kid(self) -> set[bytes]:
        return set(self._by_kid)

    # aiocoap client side (TransportOSCORE.fill_or_recognize_remote)
    def credentials_from_request(self, msg: Any) -> NodeContext:
        """The context for a request to a node. Raises CredentialsMissingError (aiocoap then
        sends it unprotected; NodeClient refuses that before, in oscore mode)."""
        ctx = self.for_address(_hostinfo(msg.get_request_uri()))
        if ctx is None:
            raise CredentialsMissingError("no OSCORE context for this node address")
        return ctx
