"""The gates of one site acting as one: what a gate learns from its peers (SPEC §4b)."""
