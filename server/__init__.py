"""The aiohttp recommendation server."""

__all__: list[str] = []
