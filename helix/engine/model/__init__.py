"""LLaMA-family model definition for a layer range."""
