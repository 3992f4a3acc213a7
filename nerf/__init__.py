"""RealFusion reconstruction stage: cameras, field, renderer, guidance and trainer."""
