"""Fixtures every test room shares: ``procs``, a process group that stops every process a
test started, by pid (SIGTERM, then SIGKILL), also when the test fails; on failure the tail
of each process log is attached to the report."""

from __future__ import annotations

import os

import pytest

# aiocoap's default transports also listen on TCP (tcpserver, tlsserver, ws) at the port given
# for UDP: a test's free UDP port then failed now and then with "address already in use" when
# its TCP twin was another test's listener. The tests speak CoAP over UDP (and OSCORE) only;
# subprocesses (aiocoap-client) inherit this. slgw chooses its transports itself.
os.environ.setdefault("AIOCOAP_SERVER_TRANSPORT", "oscore:udp6")
os.environ.setdefault("AIOCOAP_CLIENT_TRANSPORT", "oscore:udp6")

from tools.procs import ProcessGroup


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tail of every process log of the test to the report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        group = getattr(item, "_procs", None)
        if group is not None and group.procs:
            rep.sections.append(("process logs", group.dump_logs()))


@pytest.fixture
def procs(request, tmp_path):
    group = ProcessGroup(tmp_path)
    request.node._procs = group
    try:
        yield group
    finally:
        group.stop_all()
