"""scikit-learn's incremental linear models as a fedstack Trainer: `SGDClassifier` and `SGDRegressor`.

The flat vector is the model's `coef_` then its `intercept_` (classes × features + classes for more
than two classes; one row for two classes or a regression). Each fit starts a fresh clone of the
estimator at the global parameters and hands `partial_fit` the client's batches in fedstack's batch
order (`batch_order`: the task's seed, epochs or local steps, batch size), at the task's constant learning
rate `eta0 = lr`, so a round is reproducible on every engine; the update is local minus global.
Evaluation: a classifier's cross-entropy of the softmax of its decision function (the logistic loss
for two classes) with top-1 and top-3 hits; a regressor's squared error, no accuracy.

scikit-learn is imported only here (`pip install 'fedstack[sklearn]'`).
"""

from __future__ import annotations

import warnings

import numpy as np

from ..client import EvalResult, FitConfig, FitResult, Trainer, batch_order


class SklearnTrainer(Trainer):
    """`estimator`: an unfitted SGDClassifier or SGDRegressor (its loss, penalty, ... are kept; the learning
    rate and the shuffling seed come from each task). `num_features`: inputs per example (flattened);
    `classes`: the class labels (a classifier), None for a regressor."""

    def __init__(self, estimator, num_features: int, classes=None):
        self.estimator = estimator
        self.num_features = int(num_features)
        self.classes = None if classes is None else np.asarray(classes)
        rows = 1 if self.classes is None or len(self.classes) == 2 else len(self.classes)
        self.rows = rows
        self.size = rows * self.num_features + rows

    def get_params(self) -> np.ndarray:
        """The starting model: zeros, as scikit-learn starts."""
        return np.zeros(self.size, dtype=np.float32)

    def _model(self, params: np.ndarray, config: FitConfig | None = None):
        from ..extras import require

        clone = require("sklearn.base", "sklearn", "SklearnTrainer").clone

        if params.shape != (self.size,):
            raise ValueError(f"expected {self.size} parameters, got {params.shape}")
        model = clone(self.estimator)
        if config is not None:
            model.set_params(learning_rate="constant", eta0=config.lr, shuffle=False)
        weights = params[:self.rows * self.num_features].astype(np.float64).reshape(self.rows, self.num_features)
        intercept = params[self.rows * self.num_features:].astype(np.float64)
        if self.classes is None:
            model.coef_, model.intercept_ = weights[0].copy(), intercept.copy()
        else:
            model.classes_, model.coef_, model.intercept_ = self.classes, weights.copy(), intercept.copy()
        return model

    def _flat(self, model) -> np.ndarray:
        return np.concatenate([np.ravel(model.coef_), np.ravel(model.intercept_)]).astype(np.float32)

    def fit(self, params: np.ndarray, data, config: FitConfig, state=None) -> FitResult:
        model = self._model(params, config)
        x = data.x.reshape(len(data.x), -1).astype(np.float64)  # scikit-learn's SGD runs in float64
        y = data.y if self.classes is not None else data.y.astype(np.float64)
        # the batches of fedstack's own batch order, so that the client visits its data as the config says
        batches = batch_order(np.asarray(data.train_idx), config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: a few passes are all a round asks for
            for idx in batches:
                model.partial_fit(x[idx], y[idx])
        return FitResult(self._flat(model) - params, int(data.num_examples), {"steps": len(batches)})

    def evaluate(self, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> EvalResult:
        model = self._model(params)
        x = x.reshape(len(x), -1).astype(np.float64)
        if not len(x):
            return EvalResult(0.0, None if self.classes is None else 0, 0, None if self.classes is None else 0)
        if self.classes is None:
            return EvalResult(float(((model.predict(x) - y) ** 2).sum()), None, len(y), None)
        scores = model.decision_function(x)
        if scores.ndim == 1:  # two classes: the score of the second
            scores = np.stack([np.zeros_like(scores), scores], axis=1)
        scores = scores - scores.max(axis=1, keepdims=True)
        log_probs = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
        target = np.searchsorted(self.classes, y)
        top3 = np.argsort(-scores, axis=1)[:, :3]
        return EvalResult(float(-log_probs[np.arange(len(y)), target].sum()), int((scores.argmax(1) == target).sum()),
                          len(y), int((top3 == target[:, None]).any(axis=1).sum()))
