"""What the tests share: rigs, the real mosquitto, running gates, waiting on conditions, reading the ledger."""
