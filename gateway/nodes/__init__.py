"""The node registry: LwM2M registrations (reg-id, address, lifetime), online status, and the
list/show queries behind `slgw nodes` and `slgw node show`."""

from gateway.nodes.registry import Registry, node_json

__all__ = ["Registry", "node_json"]
