"""`slnode flash` states the OTA layout of the firmware's partition table and refuses an image
that could never be updated over the air (issue 12, docs/ota.md "Partition layout"): checked on
merged images made by esptool itself, no board needed."""

import pytest
from slnode_support import make_firmware

from tools.slnode import flash, partitions

OTA_4MIB = [  # MicroPython's partitions-4MiB-ota.csv
    ("nvs", 1, 2, 0x9000, 0x4000),
    ("otadata", 1, 0, 0xD000, 0x2000),
    ("phy_init", 1, 1, 0xF000, 0x1000),
    ("ota_0", 0, 0x10, 0x10000, 0x180000),
    ("ota_1", 0, 0x11, 0x190000, 0x180000),
    ("vfs", 1, 0x81, 0x310000, 0xF0000),
]


def test_ota_table_is_stated_and_an_image_that_fits_passes(tmp_path):
    fw = make_firmware(tmp_path, rows=OTA_4MIB, app_size=0x100000)
    p = flash.plan(fw, None)
    assert p.ota.startswith("OTA slots ota_0 and ota_1 of 1572864 bytes each")


def test_image_larger_than_an_ota_slot_is_refused_before_writing(tmp_path):
    fw = make_firmware(tmp_path, rows=OTA_4MIB, app_size=0x180000 + 16)
    with pytest.raises(partitions.ImageError, match="does not fit its OTA slot"):
        flash.plan(fw, None)


def test_stock_table_without_ota_slots_says_only_application_updates_work(tmp_path):
    p = flash.plan(make_firmware(tmp_path), None)
    assert p.ota.startswith("no OTA slots") and "application updates over the air work" in p.ota
    assert partitions.ota_slots(partitions.parse_partition_table(b"")) == []


def test_provision_warns_about_a_firmware_without_ota_slots_and_refuses_one_too_big(tmp_path):
    import argparse

    from tools.slnode import provision

    stock = make_firmware(tmp_path)
    ns = argparse.Namespace(firmware=str(stock))
    w = provision._layout_check("mpy", ns)
    assert any("no OTA slots" in x for x in w)
    fits = make_firmware(tmp_path, rows=OTA_4MIB, app_size=0x100000, name="ota-ok.bin")
    assert provision._layout_check("mpy", argparse.Namespace(firmware=str(fits))) == []
    big = make_firmware(tmp_path, rows=OTA_4MIB, app_size=0x180000 + 16, name="ota-big.bin")
    with pytest.raises(provision.ProvisionError, match="does not fit its OTA slot"):
        provision._layout_check("mpy", argparse.Namespace(firmware=str(big)))
