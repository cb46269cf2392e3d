"""Adapter Studio's window (PySide6). Talks to the engine only through RunSpec and Events."""
