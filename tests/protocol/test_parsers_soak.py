"""The long run of the parser fuzz tests (``pytest -m soak tests/protocol``), issue 11.

`make test` runs each fuzz test below with its own few hundred to 1,500 examples. Here the
same tests (same strategies, same assertion: only the parser's own error type may come out)
run again in a child pytest with ``SLE_FUZZ_SCALE=20``, i.e. 8,000 to 30,000 examples each
(tests/protocol/fuzz_budget.py). The OSCORE long run sits beside its short one in
test_oscore.py.
"""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FUZZ = [
    "test_cbor.py::test_random_bytes_raise_only_cbor_error",
    "test_cbor.py::test_mutated_valid_cbor_raises_only_cbor_error",
    "test_coap.py::test_random_bytes_raise_only_coap_error",
    "test_coap.py::test_mutated_messages_raise_only_coap_error",
    "test_linkformat.py::test_random_text_raises_only_linkformat_error",
    "test_senml.py::test_arbitrary_cbor_raises_only_senml_error",
]


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_parser_fuzz_long_run():
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-q", "-p", "no:cacheprovider",
         *[os.path.join(HERE, t) for t in FUZZ]],
        env={**os.environ, "SLE_FUZZ_SCALE": "20"}, capture_output=True, text=True, timeout=3500)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert f"{len(FUZZ)} passed" in r.stdout, r.stdout[-2000:]
