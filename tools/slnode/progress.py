"""Progress bars (tqdm) for the slnode steps that can take more than a second.

Bars go to stderr and switch themselves off when stderr is not a terminal (``disable=None``),
so scripted use with ``--json`` gets clean stdout and no control characters in logs.
"""

from __future__ import annotations

from tqdm import tqdm


def progress(iterable=None, **kw):
    """A tqdm bar over ``iterable`` (or a manual bar with ``total=``)."""
    kw.setdefault("disable", None)
    kw.setdefault("leave", False)
    kw.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kw)
