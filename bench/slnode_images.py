"""slnode build and provision: firmware size on the node's flash and image-making cost.

Figures (one run, ratios against baselines measured in the same run):
- source .py bytes vs compiled .mpy bytes of firmware/ and protocol/ (mpy-cross -march=xtensawin);
- `slnode build` wall time for the whole tree, and per module;
- per-node image time (littlefs image with the build + config.json) against the baseline of
  formatting an empty littlefs of the same geometry;
- filesystem space the files take, and the headroom left in the 2 MiB partition.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def run() -> dict:
    from littlefs import LittleFS

    from tools.slnode import build, partitions, provision

    geo = partitions.board_geometry("esp32")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "b"
        t0 = time.perf_counter()
        res = build.build(out, quiet=True)
        t_build = time.perf_counter() - t0
        mods, copies = build.collect_sources(build.REPO)
        src_bytes = sum((build.REPO / m).stat().st_size for m in mods)
        mpy_bytes = sum(meta["size"] for rel, meta in res.files.items() if rel.endswith(".mpy"))

        cfg = provision.check_config({"id": "bench-1", "gateway": "coap://10.0.0.2:5683"})
        rounds = 5
        best_img = best_fmt = float("inf")
        for _ in range(rounds):
            t0 = time.perf_counter()
            image = provision.make_image(provision.image_files(out, cfg), geo)
            best_img = min(best_img, time.perf_counter() - t0)
            t0 = time.perf_counter()
            LittleFS(block_size=geo.block_size, block_count=geo.block_count, read_size=32, prog_size=32,
                     lookahead_size=32, disk_version=provision.LFS_DISK_VERSION)
            best_fmt = min(best_fmt, time.perf_counter() - t0)
        fs = LittleFS(block_size=geo.block_size, block_count=geo.block_count, read_size=32, prog_size=32,
                      lookahead_size=32, mount=False)
        fs.context.buffer[:] = image
        fs.mount()
        used_blocks = fs.used_block_count
    return {
        "modules": len(mods),
        "source_py_bytes": src_bytes,
        "mpy_bytes": mpy_bytes,
        "mpy_over_py": round(mpy_bytes / src_bytes, 3) if src_bytes else None,
        "build_s": round(t_build, 3),
        "build_ms_per_module": round(1000 * t_build / max(1, len(mods)), 1),
        "image_s_best_of_5": round(best_img, 4),
        "empty_format_s_best_of_5": round(best_fmt, 4),
        "image_over_empty_format": round(best_img / best_fmt, 1) if best_fmt else None,
        "fs_used_blocks": used_blocks,
        "fs_blocks": geo.block_count,
        "fs_headroom_pct": round(100 * (1 - used_blocks / geo.block_count), 1),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
