"""vpmutrace: trace analysis for KVM virtual PMUs."""

__version__ = "0.1.0"
