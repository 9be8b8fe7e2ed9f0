"""The ingest benches' load generator patches a template instead of encoding every Send; its
datagrams must be exactly what protocol/ encodes, or the figures would measure another path."""

from bench.gateway_ingest import IN_FLIGHT, SEQ_BASE, Load, PackTemplate, _report
from protocol import coap
from protocol.lwm2m import CF_SENML_CBOR
from protocol.report import encode_reports, pack_reports, parse_send


def test_pack_template_equals_protocol_encoding():
    for per_send in (1, 16):
        tpl = PackTemplate(per_send)
        assert tpl.n == (1 if per_send == 1 else len(pack_reports([_report(SEQ_BASE + i)
                                                                   for i in range(16)])[0]))
        assert tpl.n > 1 or per_send == 1
        for first in (SEQ_BASE, SEQ_BASE + 1, 1000, 4095, 60_000):
            reps = [_report(first + i) for i in range(tpl.n)]
            assert tpl.make(first) == encode_reports(reps)
            got = parse_send(tpl.make(first))[0]
            assert [r["seq"] for r in got] == list(range(first, first + tpl.n))
            assert [r["wh"] for r in got] == [1000 + s for s in range(first, first + tpl.n)]


def test_load_datagram_equals_protocol_encoding():
    load = Load("ep-", 16)
    for slot, mid, first in ((0, 1, SEQ_BASE), (IN_FLIGHT - 1, 0xBEEF, 2000)):
        m = coap.Message(coap.CON, coap.POST, mid, mid.to_bytes(2, "big"))
        m.set_path("/dp")
        m.add_option(coap.URI_QUERY, f"ep=ep-{slot:03d}")
        m.add_option(coap.CONTENT_FORMAT, CF_SENML_CBOR)
        m.payload = load.pack.make(first)
        assert load.datagram(slot, mid, first) == coap.encode(m)
