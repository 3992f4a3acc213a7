"""Evaluation: image and geometry metrics, procedural ground-truth scenes, and an oracle guidance that measures
how much 3-D shape the reconstruction recovers when its prior is right."""
