"""What RMS announces to the floors above it. They connect in their `AppConfig.ready()`, so RMS never imports them."""

from django.dispatch import Signal

# Sent by the beat's RMS sweep once every user has been evaluated, so what runs on the same clock above RMS (the
# running strategies' own MTM limits and re-entries) runs right after it. Sent with `send`: a receiver's error fails
# the sweep task, as it did when the sweep called it directly.
sweep_finished = Signal()
