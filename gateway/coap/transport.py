"""Which aiocoap transports to use for an explicit bind address.

aiocoap's default server transport (`udp6`) opens an AF_INET6 socket even for an IPv4 bind,
and fails on hosts where IPv6 is disabled in the kernel (some Raspberry Pi images, see
field-notes §2). So:

- an IPv4 bind address (the default, and what a Pi on a town LAN uses) is served by
  `simplesocketserver` (a plain AF_INET socket on exactly that address), and requests to nodes
  (Writes, Reads) go out through the same socket, as they do through `udp6` below: a node
  behind a NAT or a stateful firewall only accepts them from the address it registered with
  (LwM2M's model). Not a separate `simple6` client context: that one keeps at most 64
  connected sockets (an LRU pool) and closes the oldest when a 65th peer is contacted, even if
  its exchange is still waiting for an ACK; in a group command to 200 nodes under 10 % loss
  that silently killed the retransmissions of ~18 % of the Writes (found by HIL scenario 6).
  The price: no ICMP errors on this socket, so an unplugged node is found by the request
  timeout (`[commands] timeout_s`), not at once. aiocoap warns at every such request that
  this is "not recommended"; `quiet_server_socket_requests()` filters that one warning;
- an IPv6 address, or a wildcard (`0.0.0.0`, `::`), needs `udp6`; on a host without IPv6 the
  service refuses to start and the log says to bind to the gateway's own IPv4 address.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any

WILDCARDS = ("0.0.0.0", "::", "")


class TransportError(RuntimeError):
    """The bind address cannot be served on this host; the message says what to change."""


def ipv6_available() -> bool:
    """Return True when this host can open an AF_INET6 UDP socket."""
    if not socket.has_ipv6:
        return False
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    except OSError:
        return False
    s.close()
    return True


def choose(bind_host: str) -> tuple[list[str], list[str]]:
    """Return (server transports, client transports) for serving on `bind_host`.

    Raises TransportError when the address needs IPv6 and the host has none.
    """
    if bind_host not in WILDCARDS:
        try:
            addr = ipaddress.ip_address(bind_host)
        except ValueError as exc:
            raise TransportError(
                f"[coap] bind = {bind_host!r} is not an IP address; give the gateway's own "
                "address, e.g. 127.0.0.1 or 192.168.1.10"
            ) from exc
        if addr.version == 4:
            return ["simplesocketserver"], ["simplesocketserver"]
    if not ipv6_available():
        raise TransportError(
            f"[coap] bind = {bind_host!r} needs IPv6, which this host has disabled; set "
            "[coap] bind to the gateway's own IPv4 address (e.g. 192.168.1.10)"
        )
    return ["udp6"], ["udp6"]


_SERVER_SOCKET_WARNING = "Sending initial messages via a server socket is not recommended"


def quiet_server_socket_requests(loggername: str = "coap-server") -> None:
    """Drop aiocoap's per-request warning about requests sent from the server socket (a
    deliberate choice here, see the module docstring); every other message passes."""
    logger = logging.getLogger(loggername)
    if not any(getattr(f, "slgw_quiet", False) for f in logger.filters):
        f = logging.Filter()
        f.filter = lambda record: record.getMessage() != _SERVER_SOCKET_WARNING  # type: ignore[method-assign]
        f.slgw_quiet = True  # type: ignore[attr-defined]
        logger.addFilter(f)


def rst_unparsable(ctx: Any, on_bad: Callable[[str], None] | None = None) -> int:
    """Make the context answer a CON datagram that does not parse with RST (SPEC §8).

    aiocoap drops unparsable datagrams silently; the contract wants an RST whenever the
    4-byte header gave a Message ID and the type is CON, so a confused node stops
    retransmitting at once. Applies to the datagram interfaces built on aiocoap's generic UDP
    interface (simplesocketserver, our IPv4 path) and to udp6 (wildcard and IPv6 binds).
    Returns how many interfaces were wrapped.
    `on_bad(host)` is called for each unparsable datagram (for rate-limited logging).
    """
    from aiocoap import error
    from aiocoap.message import Message
    from aiocoap.transports.generic_udp import GenericMessageInterface

    wrapped = 0
    for ri in getattr(ctx, "request_interfaces", []):
        mi = getattr(getattr(ri, "token_interface", None), "message_interface", None)
        if hasattr(mi, "datagram_msg_received"):  # udp6 (wildcard/IPv6 binds)
            _guard_udp6(mi, on_bad)
            wrapped += 1
            continue
        if not isinstance(mi, GenericMessageInterface):
            continue

        def received(address: Any, datagram: bytes, mi: Any = mi) -> None:
            try:
                message = Message.decode(datagram, remote=address)
            except (error.UnparsableMessage, ValueError):
                # ValueError: aiocoap lets a string option that is not UTF-8 (line noise that
                # looks like a header) escape as UnicodeDecodeError; it is unparsable too
                rst = _rst_for(datagram)
                if rst is not None:
                    address.send(rst)
                if on_bad is not None:
                    on_bad(getattr(address, "hostinfo", str(address)))
                return
            if mi._mman is not None:
                mi._mman.dispatch_message(message)

        mi._received_datagram = received
        wrapped += 1
    return wrapped


def _rst_for(datagram: bytes) -> bytes | None:
    """The RST for an unparsable datagram: only a version-1 CON whose header gave a Message ID
    (an unknown version is ignored, RFC 7252 §3)."""
    if len(datagram) >= 4 and datagram[0] >> 6 == 1 and (datagram[0] >> 4) & 3 == 0:
        return bytes((0x70, 0, datagram[2], datagram[3]))
    return None


def _guard_udp6(mi: Any, on_bad: Callable[[str], None] | None) -> None:
    """udp6 drops unparsable datagrams itself, without the RST SPEC §8 asks for, and lets the
    UnicodeDecodeError of a non-UTF-8 string option escape into the event loop's callback (a
    traceback per datagram of line noise). So each datagram is first checked with aiocoap's
    own decoder (one more decode per datagram on wildcard and IPv6 binds only): an unparsable
    CON gets its RST here and goes no further."""
    from aiocoap import error
    from aiocoap.message import Message

    orig = mi.datagram_msg_received

    def received(data: bytes, ancdata: Any, flags: int, address: Any) -> None:
        try:
            Message.decode(data)
        except (error.UnparsableMessage, ValueError):  # ValueError: see rst_unparsable
            rst = _rst_for(data)
            if rst is not None and mi.transport is not None:
                # from the address the datagram was sent to (a wildcard socket has several)
                reply = [(lvl, typ, val) for lvl, typ, val in ancdata
                         if lvl == socket.IPPROTO_IPV6 and typ == socket.IPV6_PKTINFO]
                mi.transport.sendmsg(rst, reply, 0, address)
            if on_bad is not None:
                on_bad(str(address[0]) if isinstance(address, tuple) else str(address))
            return
        orig(data, ancdata, flags, address)

    mi.datagram_msg_received = received
