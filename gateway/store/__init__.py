"""The gateway's SQLite store (WAL, single writer with group commit, migrations).

Public names: ``Store``, ``IngestResult``, ``StoreError``, ``StoreUnavailable``,
``StoreCorrupt``, ``StorePathError``, ``validate_report``, ``ensure_source``. See core.py for the write model.
"""

from .core import Store, StoreCorrupt, StoreError, StorePathError, StoreUnavailable
from .readings import IngestResult, ensure_source, validate_report

__all__ = ["Store", "StoreError", "StoreUnavailable", "StoreCorrupt", "StorePathError", "IngestResult",
           "ensure_source", "validate_report"]
