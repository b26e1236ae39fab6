"""Pipeline stages, their typed contracts, and the executors that run them."""
