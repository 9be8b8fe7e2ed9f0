"""An aiocoap-based LwM2M server for the node interop tests (NOT the gateway's code).

Records every Register, Update and Send; decodes Send payloads with ``cbor2`` and resolves
SenML names itself (RFC 8428 §4.6), independently of protocol/senml.py. Behaviour switches let
a test make it answer 4.04 to Updates (a gateway that lost its registrations), 5.03 to Sends,
or stay silent. Client helpers Read/Write/Execute/Observe the node at the address it registered
from.
"""

import asyncio
import time

import aiocoap
import cbor2
from aiocoap import resource


def resolve_senml(records):
    """Resolve base name/time of decoded SenML-CBOR records; returns [(name, t, value)]."""
    bn, bt = "", 0
    out = []
    for r in records:
        assert isinstance(r, dict)
        for k in r:
            assert k in (-2, -3, 0, 2, 3, 4, 8), f"unexpected SenML label {k}"
        bn = r.get(-2, bn)
        bt = r.get(-3, bt)
        name = bn + r.get(0, "")
        t = bt + r.get(6, 0)
        val = r[2] if 2 in r else r.get(3, r.get(4, r.get(8)))
        out.append((name, t, val))
    return out


def split_reports(resolved):
    """Group resolved records into reports (each begins at /10250/0/0), SPEC §3.1."""
    reports, attrs, cur = [], {}, None
    for name, t, val in resolved:
        if name == "/10250/0/0":
            cur = {"seq": val, "t": t, "faults": 0}  # SPEC §3.1: an absent /10250/0/1 means no fault
            reports.append(cur)
        elif cur is None:
            attrs[name] = val
        else:
            key = {"/10250/0/1": "faults", "/3311/0/5805": "wh", "/3311/0/5851": "level",
                   "/3311/0/5852": "on_time", "/3305/0/5800": "w"}.get(name)
            if key:
                cur[key] = val
    return reports, attrs


class _Update(resource.Resource):
    def __init__(self, peer, reg_id):
        super().__init__()
        self.peer, self.reg_id = peer, reg_id

    async def render_post(self, request):
        self.peer.updates.append((self.reg_id, request.opt.uri_query, request.remote.hostinfo, time.time()))
        if self.peer.update_code is not None:
            return aiocoap.Message(code=self.peer.update_code)
        self.peer.node_addr = request.remote.hostinfo
        return aiocoap.Message(code=aiocoap.CHANGED)

    async def render_delete(self, request):
        return aiocoap.Message(code=aiocoap.DELETED)


class _Rd(resource.Resource):
    def __init__(self, peer):
        super().__init__()
        self.peer = peer

    async def render_post(self, request):
        p = self.peer
        if p.silent:
            await asyncio.sleep(3600)
        q = dict(x.split("=", 1) for x in request.opt.uri_query)
        p.n_reg += 1
        reg_id = f"r{p.n_reg}"
        p.registers.append({"query": q, "raw_query": request.opt.uri_query, "cf": request.opt.content_format,
                            "body": request.payload.decode(), "addr": request.remote.hostinfo, "reg_id": reg_id,
                            "at": time.time()})
        p.node_addr = request.remote.hostinfo
        p.site.add_resource(("rd", reg_id), _Update(p, reg_id))
        p.registered.set()
        if p.time_to_write is not None:
            asyncio.get_running_loop().create_task(p.write_time())
        return aiocoap.Message(code=aiocoap.CREATED, location_path=("rd", reg_id))


class _Dp(resource.Resource):
    def __init__(self, peer):
        super().__init__()
        self.peer = peer

    async def render_post(self, request):
        p = self.peer
        if p.silent:
            await asyncio.sleep(3600)
        q = dict(x.split("=", 1) for x in request.opt.uri_query)
        records = cbor2.loads(request.payload)
        reports, attrs = split_reports(resolve_senml(records))
        entry = {"query": q, "cf": request.opt.content_format, "records": records, "reports": reports,
                 "attrs": attrs, "size": len(request.payload), "at": time.time()}
        if p.bad_seq is not None and any(r["seq"] == p.bad_seq for r in reports):
            entry["answered"] = aiocoap.BAD_REQUEST
            p.refused.append(entry)
            return aiocoap.Message(code=aiocoap.BAD_REQUEST, payload=b"refused by the test")
        if p.dp_code is not None:
            entry["answered"] = p.dp_code
            p.refused.append(entry)
            return aiocoap.Message(code=p.dp_code, max_age=p.max_age)
        p.sends.append(entry)
        for r in reports:
            p.reports.setdefault(r["seq"], r)
        p.got_send.set()
        return aiocoap.Message(code=aiocoap.CHANGED)


class Peer:
    """Start with ``await Peer.start(port)``; stop with ``await peer.stop()``."""

    def __init__(self):
        self.registers, self.updates, self.sends, self.refused = [], [], [], []
        self.reports = {}  # seq -> first report received with it
        self.n_reg = 0
        self.node_addr = None
        self.update_code = None
        self.dp_code = None
        self.max_age = 1
        self.bad_seq = None  # answer 4.00 to any pack holding this seq
        self.silent = False
        self.time_to_write = None  # callable -> int Unix time, written to /3/0/13 after Register
        self.registered = asyncio.Event()
        self.got_send = asyncio.Event()
        self.site = resource.Site()
        self.site.add_resource(("rd",), _Rd(self))
        self.site.add_resource(("dp",), _Dp(self))
        self.server = None
        self.client = None

    @classmethod
    async def start(cls, port):
        p = cls()
        p.port = port
        p.server = await aiocoap.Context.create_server_context(p.site, bind=("127.0.0.1", port))
        p.client = await aiocoap.Context.create_client_context()
        return p

    async def stop(self):
        if self.server:
            await self.server.shutdown()
        if self.client:
            await self.client.shutdown()

    def forget_registrations(self):
        """Act like a gateway that restarted without its registry: Updates get 4.04."""
        for r in self.registers:
            try:
                self.site.remove_resource(("rd", r["reg_id"]))
            except KeyError:
                pass

    async def write_time(self):
        await self.request(aiocoap.PUT, "/3/0/13", cbor2.dumps(int(self.time_to_write())), cf=60)

    async def request(self, code, path, payload=b"", cf=None, accept=None, timeout=15):
        uri = f"coap://{self.node_addr}{path}"
        m = aiocoap.Message(code=code, uri=uri, payload=payload)
        if cf is not None:
            m.opt.content_format = cf
        if accept is not None:
            m.opt.accept = accept
        return await asyncio.wait_for(self.client.request(m).response, timeout)

    async def read(self, path, accept=None):
        r = await self.request(aiocoap.GET, path, accept=accept)
        return r.code, (cbor2.loads(r.payload) if r.code == aiocoap.CONTENT and r.opt.content_format == 60 else r.payload)

    async def write(self, path, value, cf=60):
        payload = cbor2.dumps(value) if cf == 60 else value
        return (await self.request(aiocoap.PUT, path, payload, cf=cf)).code

    async def wait_for(self, cond, timeout):
        """Poll ``cond()`` every 50 ms until true; returns its value (raises on timeout)."""
        end = time.monotonic() + timeout
        while True:
            v = cond()
            if v:
                return v
            if time.monotonic() > end:
                raise TimeoutError(f"condition not met in {timeout:.0f} s")
            await asyncio.sleep(0.05)
