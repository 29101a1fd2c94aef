"""Server side: the ServerApp and the AL loop it drives (the client strategies it calls are
``fedal.selection``'s: the library never imports this package)."""
