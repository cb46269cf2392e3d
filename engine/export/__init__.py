"""Exports of a finished run: the adapter alone (loadable by peft) or merged full weights, written
beside the target, renamed into place and verified against the trained model.

May import: inference (to load the trained model), methods, events, runs. Never imports training.
"""
