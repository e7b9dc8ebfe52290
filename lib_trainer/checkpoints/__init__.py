"""Choosing and keeping a checkpoint: the held-out score of each one and the recommended epoch (recommend), and
promoting one into the host's Lora folder or pruning the others (promote)."""
