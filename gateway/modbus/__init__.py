"""Modbus for the gateway: energy meters polled from declarative profiles into the store, and
a Modbus TCP bridge server that gives SCADA the gateway's data. See docs/modbus.md.

The service's one entry point is ``start_modbus`` (gateway/modbus/service.py).
"""

from .service import ModbusHandle, start_modbus

__all__ = ["ModbusHandle", "start_modbus"]
