"""What the drivers share: the Driver base and Reading, the reconnecting serial port, GPIO."""
