"""Collector: subscribe to every site's readings and write them to the store,
acknowledging a message only once the store has it."""
