"""Processing: readings to verified monthly emission reductions (issue 4, not built yet)."""
