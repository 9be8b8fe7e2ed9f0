"""Answer sun/TZ/schedule queries for the CPython tests (which hold astral and zoneinfo).

stdin: one JSON object per line: {"op": "sun", "days": D, "lat": x, "lon": y}
  | {"op": "tz", "tz": "CET-1CEST,...", "t": unix} | {"op": "from_local", "tz": ..., "local": s}
  | {"op": "level", "steps": [...], "lat": x, "lon": y, "tz": ..., "t": unix}
stdout: one JSON answer per line.
"""

import json
import sys

from firmware.schedule import Schedule
from firmware.sun import sun_times
from firmware.tzrule import TZ


def main():
    tzs = {}
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        q = json.loads(line)
        op = q["op"]
        tz = None
        if "tz" in q:
            tz = tzs.get(q["tz"])
            if tz is None:
                tz = TZ(q["tz"])
                tzs[q["tz"]] = tz
        if op == "sun":
            r, s, st = sun_times(q["days"], q["lat"], q["lon"])
            out = [r, s, st]
        elif op == "tz":
            out = [tz.utc_offset(q["t"]), tz.is_dst(q["t"])]
        elif op == "from_local":
            out = tz.from_local(q["local"])
        elif op == "level":
            out = Schedule(q["steps"], q["lat"], q["lon"], tz).level_at(q["t"])
        else:
            out = None
        print(json.dumps(out))


main()
