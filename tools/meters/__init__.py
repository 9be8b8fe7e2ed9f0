"""Emulated Modbus energy meters (Eastron SDM120, SDM630, and the generic profile's layout).

For tests, benches and the demo: ``python -m tools.meters --model sdm630 --tcp 127.0.0.1:PORT``
or ``--rtu PTY --baud 9600`` (behind a socat pty pair, paced at the wire rate by
tools/meters/relay.py). The register maps come from the shipped profiles, so emulator and
poller agree by construction, while the limits (80 registers per read, valid address
range) follow the real devices. See docs/modbus.md.
"""
