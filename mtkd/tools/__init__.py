"""User tools behind scripts/ and `make demo`: tiled inference, export, comparison figures, the demo and its data.
May import any layer (and analysis); nothing in mtkd imports it but analysis. Scripts and tests do."""
