"""The night-shift guard's status screen (docs/contracts.md §8): a web page served by the daemon.

``gated.status.server.StatusServer`` is the service; ``auth`` imports nothing but the
standard library, so the config can check PIN hashes without loading the web server.
"""
