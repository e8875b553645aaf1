"""`bnlab activations`: per-layer activation distributions of a deep MLP, by init and with BN.

The blog's explanation of internal covariate shift (claim C5): as inputs pass through layer
after layer, the distribution of activations is distorted more and more; Xavier / He init keep
the per-layer distributions similar and Gaussian-like at the start, and BN forces it during
training. The picture the post cites is the Stanford CS231n lecture figure (Lecture 6,
"Training Neural Networks I", weight initialization): a row of per-layer histograms of a
10-layer, 500-unit tanh net for several inits (Glorot & Bengio 2010, He et al. 2015). This
experiment draws that figure for real MNIST digits, with and without BN (Ioffe & Szegedy 2015)
after every Linear layer, at init and after a few hundred training steps, and puts numbers on
it: per layer mean, std, percentiles, skewness, kurtosis and Kolmogorov-Smirnov distances to
N(0, 1).

config.py (flags), train.py (jobs, data, one net's training), measure.py (layer statistics),
analysis.py (records -> C5), report.py (run directory -> figures and sections).
"""
