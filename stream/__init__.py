"""Faust apps: topics, the movielog parser, the ingest and learn agents."""

__all__: list[str] = []
