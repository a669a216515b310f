"""Offline tools: family adapters, off-ramp model, export, GLUE, training, build, bench (the extras)."""
