"""Presentation: the interactive HTML report (html.py) and the plain-text summaries (text.py)."""
