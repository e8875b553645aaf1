"""`bnlab gan-norms`: what should the blog's GAN use instead of BN?

The blog's MLP GAN with the normalization as data (:class:`~bnlab.lab.models.gan.Variant`'s
g_norm/d_norm placement, g_kind/d_kind and d_sn): no normalization, BN as notebook 3 ran it,
BN with the DCGAN placement and no mode switching (the ablation's best), and that placement
with Batch Renorm, Virtual BN (in G), LayerNorm, GroupNorm, and spectral normalization in D
(with G unnormalized and with BN in G). Every variant trains with ``bnlab gan``'s trainer
(same batches and z per seed) and is scored with its metrics, G in eval and in train mode.
config.py (flags, the default variants), analysis.py (paired comparisons, the three
questions), report.py.
"""
