"""bnlab: batch normalization from first principles, and a lab that tests every claim."""

__version__ = "0.1.0"
