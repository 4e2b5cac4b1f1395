"""AutoLFADS: LFADS tuned by population-based training."""

__version__ = "0.1.0"
