"""Corpus generation and preparation helpers."""
