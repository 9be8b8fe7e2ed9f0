"""Writer for the SIGKILL test: does what the node does per report, as fast as it can.

Per iteration: energy grows, the counter is persisted *before* it is reported (so a report never
carries energy a cut could take back), a seq is allocated, the report goes into the outbox;
every 7th iteration the oldest pending reports are acknowledged. Progress lines on stdout
(S seq allocated, P seq wh stored, F wh persisted, A seq acked) let the test check invariants.
``argv[2] == "check"`` prints the state as JSON instead.
"""

import json
import sys

from firmware.durable import Counters, SeqAllocator
from firmware.meter import COUNTER_FIELDS
from firmware.outbox import Outbox

D = sys.argv[1]
CAP = 40


def main():
    c = Counters(D + "/counters", COUNTER_FIELDS)
    loaded = c.load()
    ob = Outbox(D, capacity=CAP)
    if len(sys.argv) > 2 and sys.argv[2] == "check":
        print(json.dumps({"loaded": loaded, "wh": c.get("wh"), "seq_hw": c.get("seq_hw"),
                          "acked": ob.acked, "pending": ob.peek(1000), "corrupt": ob.corrupt}))
        return
    sa = SeqAllocator(c)
    wh = c.get("wh")
    print("B", wh, sa.peek())
    i = 0
    while True:
        i += 1
        wh += 3
        c.set("wh", wh)
        c.flush()
        print("F", wh)
        seq = sa.next()
        print("S", seq)
        ob.put((seq, 1767225600 + seq, wh, 10.25, 50, seq, 1 << (seq % 8)))
        print("P", seq, wh)
        if i % 7 == 0:
            pend = ob.peek(5)
            if pend:
                ob.ack_through(pend[-1][0])
                print("A", pend[-1][0])


main()
