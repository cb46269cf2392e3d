"""Data files shipped with Adapter Studio: demo data, model configs, icons (a package so wheels carry them)."""

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
