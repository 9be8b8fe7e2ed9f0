"""How many examples a parser fuzz test runs: its own figure in `make test`, times
``SLE_FUZZ_SCALE`` (an integer, default 1) in the long run behind the soak marker
(tests/protocol/test_parsers_soak.py)."""

import os


def examples(n: int) -> int:
    return n * max(1, int(os.environ.get("SLE_FUZZ_SCALE", "1")))
