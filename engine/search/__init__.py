"""Automatic search: methods and a few settings tried on short budgets, the losers stopped early, the
winner trained fully (`adapter-studio auto`, the Runs page's Auto button).

Builds on training (each trial is a real run, the trials are written as a sweep); nothing in the engine
imports it.
"""
