"""Register codec and request planner: checked against pymodbus' own converter (a real peer
for the common big-endian case) and against hand-made word tables for the other orders."""

from __future__ import annotations

import math

import pytest
from pymodbus.client import ModbusTcpClient

from gateway.modbus.decode import decode, encode
from gateway.modbus.planner import plan, rtu_wire_bits
from gateway.modbus.profiles import load_profile, parse_profile

DT = ModbusTcpClient.DATATYPE
PEER = {"u16": DT.UINT16, "i16": DT.INT16, "u32": DT.UINT32, "i32": DT.INT32,
        "float32": DT.FLOAT32, "float64": DT.FLOAT64}


@pytest.mark.parametrize("dtype,value", [
    ("u16", 0), ("u16", 65535), ("i16", -1), ("i16", -32768), ("u32", 4_000_000_000),
    ("i32", -123456789), ("float32", 230.5), ("float32", -0.95), ("float64", 1234567.891),
])
@pytest.mark.parametrize("word_order", ["big", "little"])
def test_codec_matches_pymodbus(dtype, value, word_order):
    words = encode(value, dtype, word_order)
    peer = ModbusTcpClient.convert_to_registers(value, PEER[dtype], word_order=word_order)
    assert words == list(peer)
    back = decode(words, dtype, word_order)
    assert back == pytest.approx(value, rel=1e-6)
    assert ModbusTcpClient.convert_from_registers(words, PEER[dtype], word_order=word_order) == \
        pytest.approx(back, rel=1e-6)


def test_byte_order_and_scale_by_hand():
    # 0x12345678 as u32: big/big = [0x1234, 0x5678]
    assert decode([0x1234, 0x5678], "u32") == 0x12345678
    assert decode([0x5678, 0x1234], "u32", word_order="little") == 0x12345678
    assert decode([0x3412, 0x7856], "u32", byte_order="little") == 0x12345678
    assert decode([0x7856, 0x3412], "u32", "little", "little") == 0x12345678
    # Eastron import kWh float32 -> Wh with scale 1000
    assert decode(encode(123.25, "float32"), "float32", scale=1000) == pytest.approx(123250)
    assert encode(123250, "float32", scale=1000) == encode(123.25, "float32")
    # a u16 in 0.1 V
    assert decode([2305], "u16", scale=0.1) == pytest.approx(230.5)
    assert math.isnan(decode(encode(float("nan"), "float32"), "float32"))
    with pytest.raises(ValueError, match="needs 2 registers"):
        decode([1], "float32")


def test_encode_clamps_integers():
    assert encode(70000, "u16") == [65535]
    assert encode(-5, "u16") == [0]
    assert encode(float("nan"), "i32") == [0, 0]


def _profile(regs, max_registers=80, max_gap=0):
    return parse_profile({"device": {"max_registers": max_registers, "max_gap": max_gap},
                          "registers": regs}, name="t")


def test_planner_merges_neighbours_up_to_the_limit():
    regs = [{"name": f"r{i}", "address": 2 * i, "type": "float32"} for i in range(50)]  # 100 registers
    reads = plan(_profile(regs, max_registers=80))
    assert [(r.address, r.count) for r in reads] == [(0, 80), (80, 20)]
    assert sum(len(r.registers) for r in reads) == 50


def test_planner_splits_on_gap_function_and_respects_max_gap():
    regs = [{"name": "a", "address": 0, "type": "float32"},
            {"name": "b", "address": 6, "type": "float32"},       # gap of 4
            {"name": "c", "address": 30, "type": "u16"},          # gap of 22
            {"name": "h", "function": 3, "address": 0, "type": "u16"}]
    assert [(r.function, r.address, r.count) for r in plan(_profile(regs, max_gap=0))] == \
        [(3, 0, 1), (4, 0, 2), (4, 6, 2), (4, 30, 1)]
    assert [(r.function, r.address, r.count) for r in plan(_profile(regs, max_gap=4))] == \
        [(3, 0, 1), (4, 0, 8), (4, 30, 1)]


def test_planner_never_splits_a_value_and_decodes_each_read():
    regs = [{"name": "a", "address": 0, "type": "float64"}, {"name": "b", "address": 4, "type": "float64"}]
    reads = plan(_profile(regs, max_registers=6))
    assert [(r.address, r.count) for r in reads] == [(0, 4), (4, 4)]
    words = encode(1.5, "float64")
    assert reads[0].decode(words) == {"a": 1.5}
    with pytest.raises(ValueError, match="asked for 4"):
        reads[0].decode(words[:3])


def test_shipped_eastron_plans_use_80_register_reads():
    sdm630 = plan(load_profile("eastron-sdm630"))
    assert [(r.address, r.count) for r in sdm630] == [(0x0000, 80), (0x0156, 2)]
    assert max(r.count for r in plan(load_profile("eastron-sdm120"))) <= 80
    # 9600 baud 8N1: 80-register read = 8 + 165 bytes, plus 8 + 9 bytes
    assert rtu_wire_bits(sdm630, bits_per_char=10) == (8 + 5 + 160 + 8 + 5 + 4) * 10
