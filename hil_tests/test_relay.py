"""The fault-injecting relay itself: what it promises the scenarios (drop, duplicate, cut)."""

import socket
import threading

from hil_tests.harness import control


def _echo_server():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.2)
    stop = threading.Event()

    def run():
        while not stop.is_set():
            try:
                data, addr = s.recvfrom(2048)
            except TimeoutError:
                continue
            s.sendto(b"echo:" + data, addr)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return s, stop, t


def _exchange(port, payloads, timeout=0.5):
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(timeout)
    got = []
    try:
        for p in payloads:
            c.sendto(p, ("127.0.0.1", port))
        while True:
            try:
                got.append(c.recv(2048))
            except TimeoutError:
                return got
    finally:
        c.close()


def test_relay_forwards_drops_duplicates_and_partitions(start_relay):
    server, stop, thread = _echo_server()
    try:
        listen, ctl = start_relay(server.getsockname()[1])
        assert _exchange(listen, [b"a", b"b"]) == [b"echo:a", b"echo:b"]

        control(ctl, {"partition": True})
        assert _exchange(listen, [b"c"]) == []
        control(ctl, {"partition": False})
        assert _exchange(listen, [b"d"]) == [b"echo:d"]

        control(ctl, {"dup": 1.0})
        # duplicated on the way up (2 copies reach the server) and each echo on the way down
        assert _exchange(listen, [b"e"]) == [b"echo:e"] * 4
        control(ctl, {"dup": 0.0, "drop": 1.0})
        assert _exchange(listen, [b"f"]) == []
        stats = control(ctl, {"drop": 0.0})
        assert stats["dropped"] >= 1 and stats["duplicated"] >= 1 and stats["cut"] >= 1
        assert "error" in control(ctl, {"drop": 2})
    finally:
        stop.set()
        thread.join()
        server.close()


def test_relay_routes_a_nodes_answer_to_the_gateway_socket_that_asked(start_relay):
    """The gateway writes to nodes from its client socket, not its server port: the node's ACK
    must reach that socket, while the node's own requests still go to the server port."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(2)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the gateway's client context
    client.bind(("127.0.0.1", 0))
    client.settimeout(2)
    node = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    node.settimeout(2)
    try:
        listen, _ = start_relay(server.getsockname()[1])
        report = bytes([0x40, 0x02, 0x12, 0x34]) + b"\xffreport"  # CON POST mid 0x1234
        node.sendto(report, ("127.0.0.1", listen))
        data, node_via_relay = server.recvfrom(2048)
        assert data == report
        write = bytes([0x41, 0x03, 0x55, 0x66, 0x7A])  # CON PUT mid 0x5566 token 7A
        client.sendto(write, node_via_relay)
        got, relay_front = node.recvfrom(2048)
        assert got == write
        node.sendto(bytes([0x61, 0x44, 0x55, 0x66, 0x7A]), relay_front)  # ACK 2.04, same mid/token
        ack, _ = client.recvfrom(2048)
        assert ack[:4] == bytes([0x61, 0x44, 0x55, 0x66])
        node.sendto(bytes([0x40, 0x02, 0x12, 0x35]), ("127.0.0.1", listen))  # a new request
        assert server.recvfrom(2048)[0][:4] == bytes([0x40, 0x02, 0x12, 0x35])
    finally:
        for s in (server, client, node):
            s.close()
