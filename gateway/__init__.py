"""Edge gateway: poll plant meters over Modbus, keep every reading in a durable
outbox, and deliver it over MQTT once the broker has it (QoS 1)."""
