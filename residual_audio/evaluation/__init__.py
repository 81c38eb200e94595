"""Folds and protocol, the zero-shot head, the results format and the scores computed from it, training curves."""
