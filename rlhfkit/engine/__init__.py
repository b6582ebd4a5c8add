"""The shared training engine every stage runs on: the loop (accumulation, clipping, logging, evaluation,
saving), exact-resume checkpoints, seeds and RNG state, metric logs and the typed ``train:`` / stage configs.

The algorithms live in :mod:`rlhfkit.trainers`; each is a loss, an estimator or a stage wired onto this engine.
"""
