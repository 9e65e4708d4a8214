"""Models: diffusion backbones and their features, fusions, heads."""
