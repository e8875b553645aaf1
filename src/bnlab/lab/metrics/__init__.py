"""GAN sample metrics: a bnlab-trained digit classifier, Frechet distance, coverage, stray dots.

:class:`GanEvaluator` is the entry point; see :mod:`bnlab.lab.metrics.gan_metrics` for the metrics
and :mod:`bnlab.lab.metrics.classifier` for the network, its data split and its cache.
"""

from bnlab.lab.metrics.classifier import ClassifierConfig, DigitClassifier, TrainedClassifier
from bnlab.lab.metrics.gan_metrics import (
    GanEvaluator,
    class_coverage,
    feature_statistics,
    frechet_distance,
    stray_dots,
)

__all__ = [
    "ClassifierConfig",
    "DigitClassifier",
    "GanEvaluator",
    "TrainedClassifier",
    "class_coverage",
    "feature_statistics",
    "frechet_distance",
    "stray_dots",
]
