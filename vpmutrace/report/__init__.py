"""Reports: the interactive HTML report."""
