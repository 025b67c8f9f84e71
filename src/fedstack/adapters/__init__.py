"""Trainers for models outside PyTorch: `sklearn.SklearnTrainer` (scikit-learn's incremental linear models)."""
