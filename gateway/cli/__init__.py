"""`slgw`, the gateway's command line: `serve` runs the service; every other command is a thin
client of the local HTTP API (gateway/api). See docs/cli.md for commands, JSON and exit codes."""
