"""Firmware updates from the gateway: bundles, the CoAP resource nodes pull them from, and
staged roll-outs (docs/ota.md, protocol/SPEC.md §13)."""
