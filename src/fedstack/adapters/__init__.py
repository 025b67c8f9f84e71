"""Trainers for models outside PyTorch's own loop: `sklearn.SklearnTrainer` (scikit-learn's incremental linear
models) and `keras.KerasTrainer` (Keras 3 models, on Keras's torch backend)."""
