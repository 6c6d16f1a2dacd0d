"""What the tests share: rigs, the real mosquitto, running gates, waiting, reading the ledger."""
