"""The inbound side: ``loyalcast web`` (also inside ``loyalcast serve``).

An ASGI application (FastAPI, served by uvicorn) over the same database as the workers:

- ``members``: the signed unsubscribe link's page and its RFC 8058 one-click POST, and
  the preference centre per channel and category;
- ``webhooks``: ``/webhooks/<channel>``, where each channel's transport verifies and
  parses its provider's callbacks (delivery reports, bounces, bot updates); events are
  written in group commits (``ingest``) and answered only once they are in the database;
- ``optin``: Telegram's ``/start <token>`` and ``/stop``, from the webhook or from long
  polling (``loyalcast telegram poll``);
- ``health``: ``/healthz`` and Prometheus ``/metrics``.
"""
