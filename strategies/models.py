"""Strategies, legs, schedules, webhooks, rules, signals, runs and backtests.

Models arrive with this app's issue; the app is installed now so migrations and imports are stable."""
