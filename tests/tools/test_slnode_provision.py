"""slnode provision: config validation naming the field, littlefs images read back by
littlefs-python and by MicroPython's own VfsLfs2 driver, batch CSV, geometry per board/firmware."""

import json
from pathlib import Path

import pytest
from slnode_support import ROOT, make_firmware, mount_in_micropython, slnode, slnode_json

from tools.slnode import build, partitions, provision

EXAMPLE = Path(ROOT) / "tools" / "examples" / "node.toml"
GOOD = """
id = "lamp-7"
gateway = "coap://10.0.0.2:5683"
lat = 48.85
lon = 2.35
wifi_ssid = "iot"
wifi_password = "12345678"
[meter]
type = "modbus"
unit = 3
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    build.build(out, quiet=True)
    return out


def _toml(tmp_path, text, name="node.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_image_reads_back_and_matches_manifest(tmp_path, built):
    cfg_path = _toml(tmp_path, GOOD)
    img = tmp_path / "fs.bin"
    code, res = slnode_json("provision", "--config", str(cfg_path), "--image", str(img), "--build", str(built))
    assert code == 0, res
    data = img.read_bytes()
    assert len(data) == 0x200000 and res["fs_offset"] == "0x200000" and res["block_size"] == 4096
    files = provision.read_image(data)
    manifest = json.loads(files["manifest.json"])
    assert manifest["node"] == "lamp-7"
    # every file in the image is in the manifest with its hash, and vice versa (but the key file)
    assert set(files) - {"manifest.json", "oscore.json"} == set(manifest["files"])
    for rel, meta in manifest["files"].items():
        assert build.sha256_hex(files[rel]) == meta["sha256"], rel
    for rel in files:
        if rel.endswith(".mpy"):
            hdr = build.parse_mpy_header(files[rel])
            assert hdr["version"] == 6 and hdr["arch_name"] in ("none", "xtensawin")
    cfg = json.loads(files["config.json"])
    assert cfg["id"] == "lamp-7" and cfg["meter"]["unit"] == 3 and cfg["meter"]["type"] == "modbus"
    assert cfg["report_period"] == 900  # defaults filled in by the firmware's validator


def test_real_micropython_mounts_the_image_and_imports_its_firmware(tmp_path, built):
    img = tmp_path / "fs.bin"
    r = slnode("provision", "--config", str(_toml(tmp_path, GOOD)), "--image", str(img), "--build", str(built))
    assert r.returncode == 0, r.stderr
    rep = mount_in_micropython(img, tmp_path)
    assert rep["module"].startswith("/node/firmware/config.mpy")  # the compiled module from the image
    assert rep["errors"] == [] and rep["config"]["id"] == "lamp-7" and rep["config"]["lat"] == 48.85
    assert "main.py" not in rep["files"] or rep["files"]["main.py"] > 0
    assert set(rep["files"]) == set(provision.read_image(img.read_bytes()))


@pytest.mark.parametrize(
    "text,field",
    [
        ('gateway = "coap://10.0.0.2"\n', "id: missing"),
        ('id = "a"\ngateway = "coap://h:5683"\nlat = 95\n', "lat: 95 is out of range"),
        ('id = "a"\ngateway = "coap://h:5683"\nlon = -181.5\n', "lon: -181.5 is out of range"),
        ('id = "a"\ngateway = "http://h:5683"\n', "gateway: must start with coap://"),
        ('id = "a"\ngateway = "coap://h:99999"\n', "gateway: port must be 1..65535"),
        ('id = "a"\ngateway = "coap://h/x"\n', "gateway: must be coap://HOST:PORT without a path"),
        ('id = "a"\n', "gateway: missing"),
        ('id = "lamp 7"\ngateway = "coap://h"\n', "id: must be 1-63 characters"),
        ('id = "a"\ngateway = "coap://h"\nlattitude = 4\n', "lattitude: unknown key"),
        ('id = "a"\ngateway = "coap://h"\n[meter]\ntype = "mbus"\n', "meter.type: must be one of"),
        ('id = "a"\ngateway = "coap://h"\nwifi_password = "short"\n', "wifi_password:"),
    ],
)
def test_bad_config_is_refused_naming_the_field(tmp_path, built, text, field):
    img = tmp_path / "fs.bin"
    code, res = slnode_json("provision", "--config", str(_toml(tmp_path, text)), "--image", str(img), "--build", str(built))
    assert code == 2 and not res["ok"]
    assert field in res["error"], res["error"]
    assert not img.exists()


def test_invalid_toml_names_the_line(tmp_path):
    code, res = slnode_json("provision", "--config", str(_toml(tmp_path, 'id = "a"\nlat = \n')), "--image", "x.bin")
    assert code == 2 and "line 2" in res["error"]


def test_example_config_is_valid_and_documented(tmp_path, built):
    img = tmp_path / "ex.bin"
    r = slnode("provision", "--config", str(EXAMPLE), "--image", str(img), "--build", str(built))
    assert r.returncode == 0, r.stderr
    assert json.loads(provision.read_image(img.read_bytes())["config.json"])["id"] == "lamp-0001"


def test_batch_csv_writes_one_image_per_node_with_overrides(tmp_path, built):
    csv_path = tmp_path / "nodes.csv"
    csv_path.write_text(
        "# comment lines are skipped\n"
        "id,lat,meter.type,meter.unit,cabinet\n"
        "0042,45.5,modbus,7,C1\n"
        "lamp-b,,,,\n"
    )
    out = tmp_path / "imgs"
    code, res = slnode_json("provision", "--config", str(_toml(tmp_path, GOOD)), "--csv", str(csv_path),
                            "--out-dir", str(out), "--build", str(built))
    assert code == 0, res
    assert res["nodes"] == ["0042", "lamp-b"] and sorted(p.name for p in out.iterdir()) == [
        "0042.bin", "0042.oscore.json", "lamp-b.bin", "lamp-b.oscore.json"]
    sids = {json.loads((out / f"{n}.oscore.json").read_text())["node_sender_id_hex"] for n in res["nodes"]}
    assert len(sids) == 2  # one Sender ID per node
    a = json.loads(provision.read_image((out / "0042.bin").read_bytes())["config.json"])
    b = json.loads(provision.read_image((out / "lamp-b.bin").read_bytes())["config.json"])
    assert a["id"] == "0042" and a["lat"] == 45.5 and a["meter"]["unit"] == 7 and a["cabinet"] == "C1"
    assert b["id"] == "lamp-b" and b["lat"] == 48.85 and b["meter"]["unit"] == 3  # base values kept


def test_example_csv(tmp_path, built):
    out = tmp_path / "imgs"
    code, res = slnode_json("provision", "--config", str(EXAMPLE), "--csv", str(EXAMPLE.with_name("nodes.csv")),
                            "--out-dir", str(out), "--build", str(built))
    assert code == 0, res
    assert len(res["images"]) == 4


def test_batch_with_bad_rows_writes_nothing_and_names_each_line(tmp_path, built):
    csv_path = tmp_path / "nodes.csv"
    csv_path.write_text("id,lat,rated_w\nok-1,45,40\nbad-1,123,40\nbad-2,45,lots\nok-1,44,40\n")
    out = tmp_path / "imgs"
    code, res = slnode_json("provision", "--config", str(_toml(tmp_path, GOOD)), "--csv", str(csv_path),
                            "--out-dir", str(out), "--build", str(built))
    assert code == 2
    err = res["error"]
    assert "nodes.csv line 3: lat: 123.0 is out of range" in err
    assert "nodes.csv line 4: rated_w: 'lots' is not a number" in err
    assert "nodes.csv line 5: id: 'ok-1' already used on line 2" in err
    assert not out.exists() or not any(out.iterdir())


def test_files_too_large_for_the_partition(tmp_path, built):
    tiny = partitions.FsGeometry(0x200000, 16 * 4096, source="tiny")
    files = provision.image_files(built, provision.check_config({"id": "a", "gateway": "coap://h"}))
    files["firmware/blob.bin"] = bytes(100 * 1024)
    with pytest.raises(provision.ProvisionError, match="do not fit in the 65536-byte filesystem partition"):
        provision.make_image(files, tiny)


def test_geometry_comes_from_the_firmware_partition_table(tmp_path, built):
    rows = [
        ("nvs", 1, 2, 0x9000, 0x6000),
        ("phy_init", 1, 1, 0xF000, 0x1000),
        ("factory", 0, 0, 0x10000, 0x300000),
        ("vfs", 1, 0x81, 0x310000, 0xF0000),
    ]
    fw = make_firmware(tmp_path, "esp32s3", rows)
    img = tmp_path / "fs.bin"
    code, res = slnode_json("provision", "--config", str(_toml(tmp_path, GOOD)), "--image", str(img),
                            "--firmware", str(fw), "--build", str(built))
    assert code == 0, res
    assert res["fs_offset"] == "0x310000" and img.stat().st_size == 0xF0000
    assert json.loads(provision.read_image(img.read_bytes())["config.json"])["id"] == "lamp-7"


@pytest.mark.parametrize("board,size", [("esp32", 0x200000), ("esp32c3", 0x200000), ("esp32s3", 0x600000)])
def test_board_geometry(tmp_path, built, board, size):
    img = tmp_path / "fs.bin"
    code, res = slnode_json("provision", "--config", str(_toml(tmp_path, GOOD)), "--image", str(img),
                            "--board", board, "--build", str(built))
    assert code == 0, res
    assert img.stat().st_size == size and res["fs_offset"] == "0x200000"


def test_csv_line_numbers_count_comments_and_blank_lines(tmp_path, built):
    csv_path = tmp_path / "nodes.csv"
    csv_path.write_text("# header comment\n\nid,lat\n# a note\nok-1,45\n\nbad-1,95\n")
    code, res = slnode_json("provision", "--config", str(_toml(tmp_path, GOOD)), "--csv", str(csv_path),
                            "--out-dir", str(tmp_path / "o"), "--build", str(built))
    assert code == 2 and "nodes.csv line 7: lat: 95.0 is out of range" in res["error"]


@pytest.mark.parametrize(
    "name,content,expect",
    [
        ("latin1.csv", "id,cabinet\nlamp-1,Allée\n".encode("latin-1"), "is not UTF-8 text"),
        ("noid.csv", b"name,lat\nx,1\n", "the header must have an 'id' column"),
        ("empty.csv", b"id,lat\n", "has no node rows"),
        ("extra.csv", b"id,lat\nlamp-1,45,oops\n", "more cells than the header"),
        ("unknown.csv", b"id,colour\nlamp-1,red\n", "colour: unknown key"),
    ],
)
def test_hostile_csv_files(tmp_path, built, name, content, expect):
    p = tmp_path / name
    p.write_bytes(content)
    code, res = slnode_json("provision", "--config", str(_toml(tmp_path, GOOD)), "--csv", str(p),
                            "--out-dir", str(tmp_path / "o"), "--build", str(built))
    assert code == 2 and expect in res["error"], res


@pytest.mark.parametrize(
    "content,expect",
    [
        ('id = "lamp-1"\ncabinet = "Allée"\n'.encode("latin-1"), "is not UTF-8 text"),
        (b"\x00\x01\x02binary", "is not valid TOML"),
        (b'id = "x"\nid = "y"\n', "is not valid TOML"),
        (b'id = "x"\ngateway = "coap://h"\nrated_w = "40"\n', "rated_w: must be a number"),
        (b'id = "x"\ngateway = "coap://h"\nmeter = 3\n', "meter: must be a table"),
        (b'id = "x"\ngateway = "coap://h"\nlat = nan\n', "lat:"),
    ],
)
def test_hostile_toml_files(tmp_path, content, expect):
    p = tmp_path / "node.toml"
    p.write_bytes(content)
    code, res = slnode_json("provision", "--config", str(p), "--image", str(tmp_path / "x.bin"))
    assert code == 2 and expect in res["error"], res
    assert not (tmp_path / "x.bin").exists()


def test_config_is_a_directory_and_unwritable_image(tmp_path, built):
    code, res = slnode_json("provision", "--config", str(tmp_path), "--image", str(tmp_path / "x.bin"))
    assert code == 2 and "cannot read config file" in res["error"]
    dest = tmp_path / "no-such-dir" / "x.bin"
    code, res = slnode_json("provision", "--config", str(_toml(tmp_path, GOOD)), "--image", str(dest),
                            "--build", str(built))
    assert code == 2 and f"cannot write {dest}" in res["error"]


def test_image_of_a_previous_good_run_is_not_destroyed_by_a_failed_one(tmp_path, built):
    img = tmp_path / "fs.bin"
    assert slnode("provision", "--config", str(_toml(tmp_path, GOOD)), "--image", str(img),
                  "--build", str(built)).returncode == 0
    before = img.read_bytes()
    bad = _toml(tmp_path, GOOD.replace("lat = 48.85", "lat = 123"), "bad.toml")
    assert slnode("provision", "--config", str(bad), "--image", str(img), "--build", str(built)).returncode == 2
    assert img.read_bytes() == before


def test_micropython_refuses_an_image_of_another_size(tmp_path, built):
    """Why flash insists on the exact partition size: MicroPython's littlefs driver will not
    mount an image whose block count differs from the partition's."""
    img = tmp_path / "fs.bin"
    assert slnode("provision", "--config", str(_toml(tmp_path, GOOD)), "--image", str(img),
                  "--build", str(built)).returncode == 0
    big = tmp_path / "big.bin"
    big.write_bytes(img.read_bytes() + b"\xff" * 0x100000)
    import subprocess

    from slnode_support import MICROPYTHON, MP_MOUNT

    script = tmp_path / "m.py"
    script.write_text(MP_MOUNT)
    r = subprocess.run([MICROPYTHON, str(script), str(big)], capture_output=True, text=True, timeout=60,
                       cwd=str(tmp_path))
    assert r.returncode != 0 and "EINVAL" in r.stdout + r.stderr


def test_example_toml_documents_every_config_key():
    """The commented example stays in step with the firmware's schema."""
    from firmware.config import defaults, meter_defaults

    text = EXAMPLE.read_text()
    for key in defaults():
        assert f"\n{key} = " in text or f"\n# {key} = " in text or f"[{key}]" in text, key
    for key in meter_defaults():
        assert f"\n{key} = " in text or f"\n# {key} = " in text, f"meter.{key}"


def test_keys_in_the_image_and_a_0600_gateway_file_never_printed(tmp_path, built):
    """Each provisioning makes a fresh OSCORE context: oscore.json in the image for the node, and
    <id>.oscore.json (0600) beside the image for `slgw keys import`, with the same keys; neither
    the summary nor --json shows a key."""
    img = tmp_path / "fs.bin"
    cfg = _toml(tmp_path, GOOD)
    r = slnode("provision", "--config", str(cfg), "--image", str(img), "--build", str(built))
    assert r.returncode == 0, r.stderr
    node = json.loads(provision.read_image(img.read_bytes())["oscore.json"])
    key_file = tmp_path / "lamp-7.oscore.json"
    assert key_file.stat().st_mode & 0o777 == 0o600
    gw = json.loads(key_file.read_text())
    assert gw == {"ep": "lamp-7", "master_secret_hex": node["ms"], "master_salt_hex": node["salt"],
                  "node_sender_id_hex": node["sid"], "gateway_sender_id_hex": "00",
                  "alg": "AES-CCM-16-64-128", "hkdf": "sha256"}
    assert len(bytes.fromhex(node["ms"])) == 16 and len(bytes.fromhex(node["salt"])) == 8
    assert len(bytes.fromhex(node["sid"])) == 4 and node["rid"] == "00"
    for secret in (node["ms"], node["salt"]):
        assert secret not in r.stdout + r.stderr
    assert str(key_file) in r.stdout
    # the node's firmware accepts the key file it was given
    from firmware import secure

    ms, salt, sid, rid = secure.parse_keys(json.dumps(node))
    assert (ms.hex(), sid.hex(), rid) == (node["ms"], node["sid"], b"\x00")
    # --json: the paths, never the keys; a second provisioning makes new keys
    code, res = slnode_json("provision", "--config", str(cfg), "--image", str(img), "--build", str(built))
    assert code == 0 and res["key_files"] == [str(key_file)]
    assert node["ms"] not in json.dumps(res)
    gw2 = json.loads(key_file.read_text())
    assert gw2["master_secret_hex"] != gw["master_secret_hex"] and gw2["node_sender_id_hex"] != gw["node_sender_id_hex"]
    assert gw2["master_secret_hex"] not in json.dumps(res)


def test_no_oscore_makes_an_image_without_keys_and_says_so(tmp_path, built):
    img = tmp_path / "fs.bin"
    code, res = slnode_json("provision", "--config", str(_toml(tmp_path, GOOD)), "--image", str(img),
                            "--build", str(built), "--no-oscore")
    assert code == 0 and res["key_files"] == []
    assert any("UNPROTECTED" in w for w in res["warnings"])
    assert "oscore.json" not in provision.read_image(img.read_bytes())
    assert not (tmp_path / "lamp-7.oscore.json").exists()
