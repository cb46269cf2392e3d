"""Training: the run entry point, the training session and its loop, checkpoints, compiled steps,
devices and precision, the multi-device launcher, evaluation during training, and method sweeps.

May import everything below it (data, models, methods, spec, events, runs, evaluation's metrics); nothing
outside the engine, and nothing in export, inference or estimate imports it, except the sweep's cost estimate.
"""
