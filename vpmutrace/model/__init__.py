"""Reference model of the emulated and mediated vPMU designs (shared/docs/vpmu-reference.md)."""
