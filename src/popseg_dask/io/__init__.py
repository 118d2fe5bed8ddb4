"""Reading movies and writing label images."""

from .movie import describe, open_movie

__all__ = ["open_movie", "describe"]
