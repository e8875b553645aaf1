"""`bnlab batch-size`: test error vs the normalization batch (Wu & He 2018, Figure 1).

config.py (flags), train.py (jobs, the net, the training of one chunk, the train-mode and
precise evaluations), analysis.py (records -> numbers and claims), report.py (run directory ->
sections).

References:
    Y. Wu, K. He, "Group Normalization", ECCV 2018 (arXiv:1803.08494), Figure 1 and Table 2.
    S. Ioffe, "Batch Renormalization", NeurIPS 2017 (arXiv:1702.03275).
    E. Hoffer, I. Hubara, D. Soudry, "Train longer, generalize better", NeurIPS 2017 (Ghost BN).
    Y. Wu, J. Johnson, "Rethinking 'Batch' in BatchNorm", arXiv:2105.07576 (precise BN).
"""
