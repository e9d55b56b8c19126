"""Rewriting: apply a plan by slicing initializers and fixing shape constants."""
