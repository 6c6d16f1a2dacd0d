"""What the drivers share: the Driver base and Reading (base), the config models' types
(options), the reconnecting serial port (serialport), GPIO plumbing (gpio), one
debouncer (debounce) and one backoff (backoff)."""
