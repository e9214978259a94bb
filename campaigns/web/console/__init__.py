"""The marketers' console: server-rendered pages of ``loyalcast web`` under ``/console``,
behind a login (``auth``), reading settings and the ledger (``queries``), charts as SVG
(``charts``), in the program's language (``texts``)."""

from campaigns.web.console.routes import Console

__all__ = ["Console"]
