"""The gates of one site acting as one (SPEC §4b): what a gate hears of its peers.

- :mod:`gated.site.feed`: on the publisher's thread, the site's peer topics
  (``event``, ``alarm``, ``status``, ``cmd_result``) read through the input guard and
  the strict event types, refused and counted or handed to the controller in batches;
  the ``cmd/replay`` requests a gap calls for are published from there.
- :mod:`gated.site.peers`: on the controller's thread, each peer's ``seq`` tracked
  (``site_peers``, ``site_peer_seqs``), every event taken once by (gate, seq) and given
  to the rules, the gaps worth asking for, ``T/status.peers``.
- :mod:`gated.site.learn`: what a peer event teaches (the rules' tables).

A peer's events never enter the gate's own ledger and are never published again.
"""
