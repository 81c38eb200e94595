"""ResiDual: the reweighting maths, its recipes in direct mode, and inside the forward pass."""
