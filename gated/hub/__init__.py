"""The hub (``gated hub``): the district's view of every gate, and every gate's registry.

Empty for now: the hub is the next capability (docs/contracts.md §9). It consumes the events the
gates publish, parsed with the same types as the gates' own (:mod:`gated.events`).
"""
