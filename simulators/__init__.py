"""Simulated plants: each reference site's meters served as real Modbus TCP servers."""
