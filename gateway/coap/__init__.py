"""The gateway's CoAP side: the LwM2M server resources `/rd` and `/dp` (server.py), the
client that sends Read/Write/Execute/Observe to nodes (client.py), and the transport choice
that keeps the service starting on hosts without IPv6 (transport.py)."""
