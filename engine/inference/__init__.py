"""Using a trained run: loading its base model with the trained adapter, and generating answers
next to the base model's for the Try page.

May import: data (to render prompts as in training), models, methods, training.checkpoints and
training.devices. Never imports the training session, export or estimate.
"""
