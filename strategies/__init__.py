"""Server side: the AL loop and the client-strategy registry. Importing the package registers
every client strategy (``client_selection``'s and ``client_rules``')."""

from strategies import client_rules, client_selection  # noqa: F401
