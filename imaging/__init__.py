"""The pure imaging layer: code that needs nothing but the Python standard library."""
