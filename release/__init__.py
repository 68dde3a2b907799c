"""Canary controller, scheduled retraining, notifications."""

__all__: list[str] = []
