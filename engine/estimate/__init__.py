"""Cost estimates before training: trainable parameters, adapter file size and memory per method,
counted on the model built on the meta device (no weights loaded).

May import: methods, models, spec, defaults, training.devices. Never imports training's session,
export or inference.
"""
