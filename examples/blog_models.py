"""The blog's GAN networks as model factories, for `bnlab doctor`.

bnlab doctor examples/blog_models.py:notebook2_discriminator --input-shape 100,784
bnlab doctor examples/blog_models.py:notebook2_generator --input-shape 100,64
bnlab doctor examples/blog_models.py:fixed_generator --input-shape 100,64
"""

from bnlab.lab.models.gan import BLOG_VARIANTS, build_discriminator, build_generator


def notebook2_discriminator():
    """Notebook 2's D: BN after all three Linear layers, including BatchNorm1d(1) on the logit."""
    return build_discriminator(BLOG_VARIANTS["init-bn-nomode"])


def notebook2_generator():
    """Notebook 2's G: BN after all three Linear layers, including right before the Tanh."""
    return build_generator(BLOG_VARIANTS["init-bn-nomode"])


def fixed_generator():
    """Notebook 3's G: BN after Linear 1 and 2 only."""
    return build_generator(BLOG_VARIANTS["init-bn"])


def fixed_discriminator():
    """A D without BN on its input layer or logit (the DCGAN guideline)."""
    return build_discriminator(BLOG_VARIANTS["init"])
