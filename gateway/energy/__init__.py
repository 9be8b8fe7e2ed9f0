"""Energy aggregation: 15-minute buckets from cumulative readings, roll-ups, queries, savings
and the circuit check. See docs/energy.md for the rules and decisions.
"""
