"""Tools for running fedal on several machines (SuperLink + SuperNodes): see docs/deployment.md."""
