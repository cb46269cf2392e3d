"""Data files shipped with Adapter Studio: demo data, model configs, icons (a package so wheels carry them)."""
