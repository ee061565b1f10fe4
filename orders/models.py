"""Orders and their state machine, trades, positions, portfolio and reconciliation.

Models arrive with this app's issue; the app is installed now so migrations and imports are stable."""
