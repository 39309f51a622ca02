"""Semantic segmentation: models, training, distillation, evaluation and run comparison."""
