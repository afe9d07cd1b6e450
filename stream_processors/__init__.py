"""Faust stream processors: classification and routing."""
