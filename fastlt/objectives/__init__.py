"""Contrastive objectives; they see embeddings only, never data or labels' origin."""
