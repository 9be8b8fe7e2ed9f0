"""OSCORE's cost on the gateway (issue 11): live reports/s through the whole `slgw serve` with
`security = "oscore"` against the same gateway with `security = "none"`, in the same run.

    .venv/bin/python bench/gateway_oscore_ingest.py [--duration 4] [--rounds 3]

Two `slgw serve` processes side by side; the load alternates between them slice by slice (the
order swaps every round) so each pair sees the same background load on this shared machine.
The load is bench/gateway_ingest.py's raw-UDP generator (32 CON Sends in flight, one endpoint
per slot, one report per Send). For the protected gateway each slot is a node with its own key
(imported like `slgw keys import`), Registers under it, and protects each Send with aiocoap's
OSCORE (node side) before it goes on the wire; retransmissions resend the same bytes. Every
acknowledged report is checked in each database after a graceful stop (a protected 2.04 is
acknowledged by its outer code: the check in the database is what proves it was stored).
Server CPU is read from /proc/<pid>/stat, so the CPU ratio holds even if the load generator,
which pays for the node side's encryption, is the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import aiocoap  # noqa: E402
from aiocoap.numbers.codes import Code  # noqa: E402
from aiocoap.oscore import FilesystemSecurityContext  # noqa: E402

from bench.gateway_ingest import IN_FLIGHT, Load, run_load, verify  # noqa: E402
from bench.gateway_service_ingest import Slgw  # noqa: E402
from gateway.coap import keystore  # noqa: E402
from protocol.lwm2m import CF_LINK_FORMAT, CF_SENML_CBOR  # noqa: E402


def make_keys(tmp: str, kdir: str, prefix: str) -> list[FilesystemSecurityContext]:
    """One key per slot: imported into the gateway's keys directory; the node side returned."""
    ctxs = []
    for slot in range(IN_FLIGHT):
        ep = f"{prefix}{slot:03d}"
        sid, ms, salt = os.urandom(4), os.urandom(16), os.urandom(8)
        keystore.import_key(kdir, {"ep": ep, "secret": ms, "salt": salt, "node_sid": sid,
                                   "gw_sid": b"\0"})
        d = os.path.join(tmp, "node-" + ep)
        os.mkdir(d, 0o700)
        with open(os.path.join(d, "secret.json"), "w") as f:
            json.dump({"secret_hex": ms.hex(), "salt_hex": salt.hex()}, f)
        with open(os.path.join(d, "settings.json"), "w") as f:
            json.dump({"sender-id_hex": sid.hex(), "recipient-id_hex": "00",
                       "algorithm": keystore.ALG, "kdf-hashfun": keystore.HKDF}, f)
        ctxs.append(FilesystemSecurityContext(d))
    return ctxs


def protect(ctx: FilesystemSecurityContext, mid: int, path: tuple, payload: bytes, cf: int,
            query: tuple = ()) -> bytes:
    msg = aiocoap.Message(code=Code.POST, uri_path=path, uri_query=query, payload=payload)
    msg.opt.content_format = cf
    out, _ = ctx.protect(msg)
    out.mtype, out.mid, out.token = aiocoap.CON, mid, mid.to_bytes(2, "big")
    return out.encode()


def register_protected(port: int, prefix: str, ctxs: list) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    try:
        for slot, ctx in enumerate(ctxs):
            s.sendto(protect(ctx, slot + 1, ("rd",), b"</3311/0>", CF_LINK_FORMAT,
                             (f"ep={prefix}{slot:03d}", "lt=3600", "lwm2m=1.1", "b=U")),
                     ("127.0.0.1", port))
            r = aiocoap.Message.decode(s.recv(2048))
            if r.mtype == aiocoap.ACK and r.code == Code.EMPTY:  # the answer comes separately
                r = aiocoap.Message.decode(s.recv(2048))
                s.sendto(aiocoap.Message(mtype=aiocoap.ACK, code=Code.EMPTY, mid=r.mid).encode(),
                         ("127.0.0.1", port))
            assert r.opt.oscore is not None, f"Register of slot {slot} not protected: {r}"
    finally:
        s.close()


class OscoreLoad(Load):
    """bench/gateway_ingest.Load whose slots are OSCORE nodes: no ?ep=, the key says who."""

    def __init__(self, prefix: str, per_send: int, ctxs: list) -> None:
        super().__init__(prefix, per_send)
        self.ctxs = ctxs

    def datagram(self, slot: int, mid: int, first: int) -> bytes:
        return protect(self.ctxs[slot], mid, ("dp",), self.pack.make(first), CF_SENML_CBOR)


async def bench(duration: float, rounds: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="slgw-bench-oscore-")
    kdir = os.path.join(tmp, "keys")
    plain = protected = None
    runs: dict[str, list[dict]] = {"none": [], "oscore": []}
    acked: dict[str, list] = {"none": [], "oscore": []}
    ctxs_all = []
    try:
        plain = Slgw(os.path.join(tmp, "none.db"))
        keys_per_round = [make_keys(tmp, kdir, f"osc{r}-") for r in range(rounds)]
        ctxs_all = [c for k in keys_per_round for c in k]
        protected = Slgw(os.path.join(tmp, "oscore.db"),
                         ["--coap-security", "oscore", "--coap-keys-dir", kdir])
        for rnd in range(rounds):
            plain.register(f"none{rnd}-")
            register_protected(protected.port, f"osc{rnd}-", keys_per_round[rnd])
            order = [("none", plain), ("oscore", protected)]
            if rnd % 2:
                order.reverse()
            for kind, srv in order:
                prefix = f"{'none' if kind == 'none' else 'osc'}{rnd}-"
                load = OscoreLoad(prefix, 1, keys_per_round[rnd]) if kind == "oscore" else None
                r = await run_load(srv.port, prefix, 1, duration, srv, load)
                runs[kind].append(r)
                acked[kind] += r["acked"]
                if r["other_codes"]:
                    print(f"  {kind}: non-2.04 answers {r['other_codes']}")
            n, o = runs["none"][-1], runs["oscore"][-1]
            print(f"round {rnd + 1}: none {n['reports_per_s']:.0f} reports/s "
                  f"({n['cpu_per_message_ms']:.3f} ms server CPU/msg), oscore "
                  f"{o['reports_per_s']:.0f} reports/s ({o['cpu_per_message_ms']:.3f} ms) = "
                  f"{100 * o['reports_per_s'] / n['reports_per_s']:.0f} %", flush=True)
    finally:
        for c in ctxs_all:
            c._destroy()
        for srv in (plain, protected):
            if srv is not None:
                srv.stop()
    checks = {k: verify(os.path.join(tmp, f"{k}.db"), acked[k]) for k in acked}
    thr = [100 * o["reports_per_s"] / n["reports_per_s"]
           for n, o in zip(runs["none"], runs["oscore"], strict=True)]
    cpu = [100 * n["cpu_per_message_ms"] / o["cpu_per_message_ms"]
           for n, o in zip(runs["none"], runs["oscore"], strict=True)]
    med = statistics.median
    out = {
        "none_reports_per_s": round(med(r["reports_per_s"] for r in runs["none"])),
        "oscore_reports_per_s": round(med(r["reports_per_s"] for r in runs["oscore"])),
        "throughput_ratio_pct": round(med(thr)), "throughput_pairs_pct": [round(x) for x in thr],
        "none_cpu_ms_per_msg": round(med(r["cpu_per_message_ms"] for r in runs["none"]), 3),
        "oscore_cpu_ms_per_msg": round(med(r["cpu_per_message_ms"] for r in runs["oscore"]), 3),
        "cpu_ratio_pct": round(med(cpu)), "cpu_pairs_pct": [round(x) for x in cpu],
        "acked_missing": {k: v[1] for k, v in checks.items()},
        "acked": {k: v[0] for k, v in checks.items()},
    }
    print()
    print(f"slgw serve, live ingest, 1 report per Send, {IN_FLIGHT} in flight, {rounds} alternating "
          f"rounds of {duration:g} s per gateway (medians):")
    print(f"  security = none:   {out['none_reports_per_s']:6d} reports/s, "
          f"{out['none_cpu_ms_per_msg']:.3f} ms server CPU/msg")
    print(f"  security = oscore: {out['oscore_reports_per_s']:6d} reports/s, "
          f"{out['oscore_cpu_ms_per_msg']:.3f} ms server CPU/msg")
    print(f"  OSCORE / none: {out['throughput_ratio_pct']} % by throughput (pairs "
          f"{out['throughput_pairs_pct']}), {out['cpu_ratio_pct']} % by server CPU cost (pairs "
          f"{out['cpu_pairs_pct']})")
    for k, (n, missing, mode) in checks.items():
        print(f"  {k}: {n} acknowledged reports checked in the database, {missing} missing ({mode})")
    if any(v[1] for v in checks.values()):
        raise SystemExit("acknowledged reports missing from a database")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=4.0, help="seconds per slice")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    asyncio.run(bench(a.duration, a.rounds))


if __name__ == "__main__":
    main()
