"""A simulated streaming site: users, sessions, the course API. Imports nothing of the project."""

__all__: list[str] = []
