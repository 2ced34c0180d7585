"""Sealed bytes on the parties' own keys (sealing): envelopes only the named readers open, and a private job's artifacts encrypted at rest."""
