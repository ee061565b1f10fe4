"""Broker accounts, encrypted credentials, broker adapters and protocol simulators.

Models arrive with this app's issue; the app is installed now so migrations and imports are stable."""
