"""Plans, entitlements, Razorpay subscriptions, payments and webhooks.

Models arrive with this app's issue; the app is installed now so migrations and imports are stable."""
