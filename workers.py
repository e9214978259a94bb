"""Entry point for ``dramatiq workers``: installs the broker and re-exports the actors.

Nothing in the library imports this module; the actors live in
``campaigns.app.actors``. ``loyalcast worker`` starts ``dramatiq`` on it.
"""

from campaigns.app.actors import ACTORS, deliver_batch, plan_campaign, send_triggered

__all__ = ["ACTORS", "deliver_batch", "plan_campaign", "send_triggered"]
