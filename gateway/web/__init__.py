"""The web view of the town (issue 14, docs/web.md): server-rendered pages served by `slgw` on
the API's address and port, at / and /web/. Pages: views.py; tokens and sessions: auth.py; HTML
and SVG: render.py; what a lamp should be doing: expect.py."""


def is_web(path: str) -> bool:
    """True for the web view's paths, which do their own token checks (auth.py)."""
    return path in ("/", "/web") or path.startswith("/web/")
