"""What exists only for the demo and for tests: the broker and Razorpay simulators, their live-feed sockets and the
demo seeding. Installed only outside production or when the simulators are on; production apps never import it."""
