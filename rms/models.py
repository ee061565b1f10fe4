"""Risk profiles, pre-trade checks, MTM monitoring, square-off and kill switches.

Models arrive with this app's issue; the app is installed now so migrations and imports are stable."""
