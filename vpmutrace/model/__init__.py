"""Reference model of the emulated and mediated vPMU designs (docs/design.md)."""
