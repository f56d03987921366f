"""Backends of the shared training loop: one adapter per talking-head model."""
