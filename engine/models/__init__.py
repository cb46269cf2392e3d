"""Base models: what a model source is (folder, GGUF file, hub id, shipped config) before loading,
loading it for training, and the cache of GGUF files converted to safetensors folders.

May import: errors, spec, app_cache. Never imports data, training, methods, estimate or export.
"""
