"""Linear probes: how much of a labelled task a layer's features hold, by cross-validated accuracy.

The probe is scikit-learn's multinomial logistic regression on standardised
features: ``Pipeline(StandardScaler, LogisticRegressionCV)``, whose L2 penalty
is chosen by an inner stratified cross-validation on each training fold, scored
under an outer ``StratifiedKFold``. Needs scikit-learn (``featviz[reports]``).

Penalties are given as the weight of ``penalty / 2 * ||W||^2`` added to the
*mean* cross-entropy (so a value means the same for any number of images);
scikit-learn's ``C`` weighs the *summed* loss instead, so ``C = 1 / (penalty * n)``
with n the images the final fit sees (the training fold). The inner folds fit on
(k-1)/k of those images with the same ``C``, i.e. a penalty k/(k-1) times stronger:
the choice between penalties a factor 10 apart is unaffected.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FeatvizError

PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
MAX_ITER = 1000
PIXELS = "pixels"          # pseudo layer: the input itself, average-pooled to PIXEL_GRID x PIXEL_GRID
PIXEL_GRID = 8


@torch.no_grad()
def pooled_features(model, images: torch.Tensor, layers: Sequence[str],
                    batch_size: int = 32) -> dict[str, torch.Tensor]:
    """layer -> (N, C) float64: the mean over positions of each layer's output. ``pixels``
    stands for the input average-pooled to 8 x 8 (192 values)."""
    hooked = [l for l in layers if l != PIXELS]
    out: dict[str, list[torch.Tensor]] = {l: [] for l in layers}
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size].to(model.device)
        if PIXELS in out:
            out[PIXELS].append(F.adaptive_avg_pool2d(x, PIXEL_GRID).flatten(1).double().cpu())
        if hooked:
            acts = model.activations(x, hooked)
            for name in hooked:
                a = acts[name].float()
                a = a.mean((2, 3)) if a.dim() == 4 else a.flatten(1)
                out[name].append(a.double().cpu())
    return {name: torch.cat(v) for name, v in out.items()}


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise FeatvizError("the linear probes need scikit-learn, which is not installed: "
                           "pip install 'featviz[reports]'") from None


@contextmanager
def _quiet_single_thread():
    """One BLAS/OpenMP thread (small matrices: fastest, and least hurt by other jobs), and no
    ConvergenceWarning per fit: a probe that stops at MAX_ITER iterations is still scored on
    held-out data, which is what the report states."""
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # Few images per class in an inner fold: sklearn warns, the folds are still stratified.
        warnings.filterwarnings("ignore", message="The least populated class")
        yield


def _cv_options() -> dict:
    """Arguments scikit-learn 1.8+ wants stated (pure L2; the new fitted attributes) to stop its
    FutureWarnings; older versions do not take them and behave the same without."""
    import inspect

    from sklearn.linear_model import LogisticRegressionCV

    known = inspect.signature(LogisticRegressionCV).parameters
    options = {"l1_ratios": (0.0,), "use_legacy_attributes": False}
    return {name: value for name, value in options.items() if name in known}


def _numpy(x) -> np.ndarray:
    return x.double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def _c_value(penalty: float, n_images: int) -> float:
    return 1.0 / (float(penalty) * n_images)


class LogisticProbe:
    """Multinomial logistic regression with an L2 penalty on the weights (not the bias), on
    features standardised with the training set's mean and std: a scikit-learn pipeline.

    Loss: mean cross-entropy + ``penalty`` / 2 * ||W||^2. ``weight`` is (features, classes)
    in standardised units ((features, 1) for two classes, as scikit-learn fits them).
    """

    def __init__(self, penalty: float = 1e-2, max_iter: int = MAX_ITER):
        self.penalty, self.max_iter = float(penalty), int(max_iter)
        self.pipeline = None
        self.weight = self.bias = None

    def fit(self, x, y, n_classes: int | None = None) -> "LogisticProbe":
        """Fit on features x (N, D) and labels y (N,). ``n_classes`` is accepted for callers that
        know it; the classes are those present in y."""
        _sklearn()
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        labels = _numpy(y).astype(np.int64)
        self.pipeline = make_pipeline(StandardScaler(), LogisticRegression(
            C=_c_value(self.penalty, len(labels)), max_iter=self.max_iter))
        with _quiet_single_thread():
            self.pipeline.fit(_numpy(x), labels)
        regression = self.pipeline[-1]
        self.weight = torch.from_numpy(regression.coef_.T.copy())
        self.bias = torch.from_numpy(regression.intercept_.copy())
        return self

    def predict(self, x) -> torch.Tensor:
        return torch.from_numpy(self.pipeline.predict(_numpy(x)).astype(np.int64))

    def accuracy(self, x, y) -> float:
        return float((self.predict(x) == torch.as_tensor(y)).double().mean())


def stratified_folds(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Fold index (0..k-1) per sample from scikit-learn's ``StratifiedKFold`` (shuffled with
    ``seed``): every fold holds each class in proportion."""
    _sklearn()
    from sklearn.model_selection import StratifiedKFold

    y = _numpy(labels).astype(np.int64)
    fold = np.empty(len(y), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=int(seed))
    with _quiet_single_thread():
        for index, (_train, test) in enumerate(splitter.split(np.zeros(len(y)), y)):
            fold[test] = index
    return torch.from_numpy(fold)


def fit_cv_probe(x: np.ndarray, y: np.ndarray, penalties: Sequence[float], inner_folds: int, seed: int):
    """Pipeline(StandardScaler, LogisticRegressionCV) fit on (x, y), its penalty chosen by
    ``inner_folds``-fold stratified CV (best mean accuracy; ties go to the stronger penalty).
    When a class has fewer images than 2, there is nothing to cross-validate: the middle
    penalty is used. Returns (fitted pipeline, chosen penalty)."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    strongest_first = sorted(penalties, reverse=True)
    inner = min(int(inner_folds), int(np.bincount(y).min()))
    if inner < 2:
        penalty = strongest_first[len(strongest_first) // 2]
        pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=_c_value(penalty, len(y)), max_iter=MAX_ITER))
        return pipeline.fit(x, y), penalty
    cs = [_c_value(p, len(y)) for p in strongest_first]
    splitter = StratifiedKFold(n_splits=inner, shuffle=True, random_state=int(seed))
    pipeline = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=cs, cv=splitter, scoring="accuracy",
                                                                    max_iter=MAX_ITER, **_cv_options()))
    pipeline.fit(x, y)
    chosen = float(np.ravel(pipeline[-1].C_)[0])
    return pipeline, strongest_first[int(np.argmin([abs(c - chosen) for c in cs]))]


def probe_cv(x: torch.Tensor, y: torch.Tensor, n_classes: int, folds: int = 5, seed: int = 0,
             penalties: Sequence[float] = PENALTIES, inner_folds: int = 3) -> dict:
    """Stratified ``folds``-fold accuracy of the probe; the penalty is chosen on each training
    fold by an inner cross-validation. Returns per-fold accuracies, their mean and std, and the
    penalties chosen."""
    _sklearn()
    if not penalties:
        raise FeatvizError("give at least one penalty")
    features, labels = _numpy(x), _numpy(y).astype(np.int64)
    fold = stratified_folds(y, folds, seed).numpy()
    accs, chosen = [], []
    with _quiet_single_thread():
        for f in range(folds):
            train, test = fold != f, fold == f
            pipeline, penalty = fit_cv_probe(features[train], labels[train], penalties, inner_folds, seed + 1 + f)
            accs.append(float((pipeline.predict(features[test]) == labels[test]).mean()))
            chosen.append(penalty)
    return {"accuracy": float(np.mean(accs)), "std": float(np.std(accs)), "folds": accs, "penalties": chosen}


def probe_channels(x: torch.Tensor, y: torch.Tensor, n_classes: int, penalty: float, k: int) -> list[int]:
    """The ``k`` channels the probe (fit on all of x, y) leans on most: largest norm of their
    standardised weights over the classes."""
    probe = LogisticProbe(penalty).fit(x, y, n_classes)
    return [int(i) for i in probe.weight.norm(dim=1).argsort(descending=True)[:k]]
