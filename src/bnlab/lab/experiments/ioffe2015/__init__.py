"""`bnlab ioffe2015`: Ioffe & Szegedy 2015, section 4.1 and Figure 1, on MNIST.

"Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate Shift"
(ICML 2015), section 4.1: an MLP with 3 fully connected hidden layers of 100 sigmoid units,
weights initialized to small random Gaussian values, a 10-way softmax, trained on MNIST with
batches of 60, once plain and once with BN after every hidden layer (before the sigmoid).
Figure 1 shows (a) test accuracy against training steps for both nets, and (b, c) the
{15, 50, 85}th percentiles of the input of one sigmoid of the last hidden layer over training:
the baseline's distribution drifts, the BN net's stays put.

What the paper does not give, chosen here and written into the report: the optimizer (plain
SGD, the paper's era default), its learning rate, the init std, and which sigmoid is plotted.
The paper trains 50,000 steps; the default here is 20,000 (see ``Training.steps`` in config.py).

config.py (flags), train.py (jobs, data, one net's training and evaluation), analysis.py
(records -> verdicts), report.py (run directory -> Figure 1 and tables).
"""
