"""The local HTTP/JSON API (aiohttp): the integrators' API and what the `slgw` CLI talks to.
Routes are in app.py; their OpenAPI 3 description in openapi.py, served at /openapi.json."""
