"""`bnlab gan-ablation`: which of notebook 2's differences broke its BN GAN?

config.py (flags, the design's cells), analysis.py (effects, paths, conclusion), report.py.
Every cell is a GAN job trained by :mod:`bnlab.lab.experiments.gan`'s training function.
"""
