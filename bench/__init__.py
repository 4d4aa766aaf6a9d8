"""assimbench harness: config -> grid -> runner -> results -> report."""
__version__ = "0.1.0"
