"""Tracepoint format engine: format-file parsing, print fmt evaluation, binary field decoding."""
