"""Protocol simulators of the brokers (Kite, Dhan, Fyers and their live feeds) and of Razorpay, on the simulated
exchange, so the SDKs are exercised for real with no internet."""
