"""Cost estimates before training: trainable parameters, adapter file size and memory per method,
counted on the model built on the meta device (no weights loaded).

May import: methods, models, spec, defaults, training.devices. Never imports training's session,
export or inference.

Modules, each importing only those above it: `meta_models` (the meta-device models, their cache and
cheap copies), `sizes` (adapter file, quantised weight and optimizer bytes), `memory` (a training
step's memory by part, activations included), `costs` (`estimate`: one method on one model) and
`table` (`estimate_table` and `format_table` for the CLI and the window).
"""
