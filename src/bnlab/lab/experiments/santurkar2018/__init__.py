"""`bnlab santurkar2018`: Santurkar, Tsipras, Ilyas & Madry, "How Does Batch Normalization Help
Optimization?" (NeurIPS 2018), at CPU scale: noisy BN, internal covariate shift by their
Definition 2.1, the landscape along the gradient, and the learning-rate range; and claim C5b.

config.py (flags), nets.py (the networks, noisy BN), measure.py (the measurements, pure),
train.py (jobs, data, training of one chunk), analysis.py (records -> verdicts), report.py.
"""
