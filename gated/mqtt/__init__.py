"""Everything that speaks MQTT: the publisher and its link, commands, the input guard, registry
sync, Home Assistant discovery."""
