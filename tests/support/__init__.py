"""What the tests share: rigs, the real mosquitto, running gates, serial ports, the browser,
waiting on conditions, reading the ledger. The fixtures built on them are in tests/conftest.py."""
