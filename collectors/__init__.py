"""Capture side of vpmutrace: record a KVM host (perf or tracefs), snapshot it, prove it with a real guest."""
