"""Recur trainer."""
