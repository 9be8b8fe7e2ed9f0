"""Node firmware (MicroPython; also importable from CPython for pure modules such as config)."""
