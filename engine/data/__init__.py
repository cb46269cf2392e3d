"""Datasets: reading files, detecting their shape, rendering rows as training text, tokenising,
the on-disk token cache, batching, and the Data page's preview.

May import: errors, spec, defaults, models, app_cache. Never imports training, estimate, export or
inference (they build on data, not the other way round).
"""
