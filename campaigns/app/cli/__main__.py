"""``python -m campaigns.app.cli``: the same as the ``loyalcast`` command."""

from campaigns.app.cli import main

main()
