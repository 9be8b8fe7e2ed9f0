"""Energy aggregation: 15-minute buckets from cumulative readings, roll-ups, queries, savings
and the circuit check. See docs/energy.md for the rules and decisions.
"""

from .buckets import BUCKET_S, QUALITY_NAMES, buckets_from_readings
from .query import circuit_check, energy, sum_by_source
from .savings import savings

__all__ = ["BUCKET_S", "QUALITY_NAMES", "buckets_from_readings", "energy", "circuit_check",
           "savings", "sum_by_source"]
