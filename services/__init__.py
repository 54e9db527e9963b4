"""Recur services."""
