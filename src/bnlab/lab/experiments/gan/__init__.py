"""`bnlab gan`: the blog's three MNIST GAN notebooks side by side, measured.

config.py (flags), train.py (jobs, data, the training of one chunk), analysis.py (records ->
claims), report.py (run directory -> sections), observers.py (TensorBoard).
"""
