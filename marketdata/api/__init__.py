"""Market-data routes, one module per area (instruments, quotes and candles, option chain)."""
