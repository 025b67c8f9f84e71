"""A Trainer written in plain NumPy (multinomial logistic regression): no PyTorch needed."""

import sys

import numpy as np
from sklearn.datasets import load_digits

import fedstack


class LogisticRegression:
    """fit/evaluate on flat parameters: a (features × classes) weight matrix, then the biases."""

    def __init__(self, features: int = 64, classes: int = 10):
        self.features, self.classes = features, classes

    def split(self, params):
        w = params[: self.features * self.classes].reshape(self.features, self.classes)
        return w, params[self.features * self.classes:]

    def probabilities(self, params, x):
        w, b = self.split(params)
        logits = x.reshape(len(x), -1) @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def fit(self, params, data, config, state=None):
        local = params.copy()
        for batch in fedstack.client.batch_order(data.train_idx, config):
            x, y = data.x[batch].reshape(len(batch), -1), data.y[batch]
            grad_logits = self.probabilities(local, x)
            grad_logits[np.arange(len(y)), y] -= 1
            grad_logits /= len(y)
            w, b = self.split(local)
            w -= config.lr * (x.T @ grad_logits)
            b -= config.lr * grad_logits.sum(axis=0)
        return fedstack.FitResult(update=local - params, num_examples=data.num_examples)

    def evaluate(self, params, x, y):
        p = self.probabilities(params, x)
        loss = -np.log(p[np.arange(len(y)), y] + 1e-12).sum()
        return fedstack.EvalResult(float(loss), int((p.argmax(1) == y).sum()), len(y))


def main(rounds: int = 20) -> fedstack.History:
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    data = fedstack.FederatedDataset.from_arrays(x[:1400], y[:1400], x[1400:], y[1400:], num_clients=20,
                                                 partition="dirichlet", alpha=0.5, seed=0)
    history = fedstack.simulate(LogisticRegression, data, np.zeros(64 * 10 + 10, np.float32),
                                strategy=fedstack.FedAvg(fedstack.FitConfig(epochs=1, batch_size=10, lr=0.5)),
                                rounds=rounds, clients_per_round=5, engine="local", seed=0)
    print(f"test accuracy after {rounds} rounds: {history.rounds[-1]['test_accuracy']:.3f}")
    return history


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
