"""Contrastive objectives: they see embeddings and a temperature, never data."""
