"""Instrument master, quote cache, ticks, feeds, candles, option chain and market calendar.

Models arrive with this app's issue; the app is installed now so migrations and imports are stable."""
