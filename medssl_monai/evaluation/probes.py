"""The frozen-encoder protocols the SSL literature reports beside fine-tuning: a linear probe and k-NN.

Both read the pooled features of the encoder (the classifier without its last linear layer), unchanged by
training: they measure what pre-training put into the features, where fine-tuning measures how good a start
they are.

- ``linear``: a multinomial logistic regression (scikit-learn, L-BFGS) on standardised features; its inverse
  regularisation ``C`` is chosen from ``c_grid`` by the validation split's ROC AUC (ties: the smaller ``C``),
  then the model fitted on the labelled training subset alone predicts the test split.
- ``knn``: a vote of the ``k`` nearest labelled training images by cosine similarity, each weighted by
  exp(similarity / temperature) (Wu et al. 2018; solo-learn's and lightly's defaults are k = 20 and
  T = 0.07 / 0.1); the normalised votes are the class probabilities, so ROC AUC is defined.

The labelled subset is the one fine-tuning trains on (:func:`~medssl_monai.data.stratified_subset_indices`
of the full training split with the same ``label_fraction`` and ``seed``), so the three protocols compare on
exactly the same labels.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import DataLoader
from torch import nn

from medssl_monai.data.downstream import stratified_subset_indices
from medssl_monai.utils.identity import fingerprint
from medssl_monai.evaluation.metrics import point_metrics
from medssl_monai.evaluation.report import write_classification_report
from medssl_monai.utils import as_bool, atomic_path

__all__ = ["PROTOCOLS", "C_GRID", "FrozenProbe", "encode", "knn_probabilities", "knn_predict", "linear_probe"]

logger = logging.getLogger(__name__)

PROTOCOLS = ("finetune", "linear", "knn")
C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


@contextlib.contextmanager
def _headless(network: nn.Module) -> Iterator[nn.Module]:
    """``network`` with its last linear layer (``fc``, as in MONAI's and torchvision's ResNets) bypassed, so its
    output is the pooled feature vector."""
    net = getattr(network, "module", network)
    head = getattr(net, "fc", None)
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{type(net).__name__} has no linear 'fc' head; the frozen protocols need a ResNet-like "
                        "classifier whose fc layer follows the pooled features")
    net.fc = nn.Identity()
    try:
        yield net
    finally:
        net.fc = head


@torch.no_grad()
def encode(network: nn.Module, dataset, device: torch.device | str = "cpu",
           batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
    """Pooled features (N, D), labels (N,) and patient ids (N,) or None, of every sample of ``dataset``."""
    feats, labels, patients = [], [], []
    with _headless(network) as net:
        was_training = net.training
        net.eval()
        try:
            for batch in DataLoader(dataset, batch_size=batch_size, num_workers=0):
                images = batch["image"]
                images = images.as_tensor() if hasattr(images, "as_tensor") else torch.as_tensor(images)  # no meta
                feats.append(net(images.to(device)).float().cpu())  # (B, D)
                labels.append(torch.as_tensor(batch["label"]).long().view(-1))
                patients += [str(p) for p in batch["patient"]] if "patient" in batch else []
        finally:
            net.train(was_training)
    labels = torch.cat(labels)
    return torch.cat(feats), labels, patients if len(patients) == len(labels) else None


def knn_probabilities(memory: torch.Tensor, memory_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                      k: int = 20, temperature: float = 0.07) -> torch.Tensor:
    """Class probabilities (Q, C) of ``queries`` (Q, D): the normalised, similarity-weighted votes of their
    ``k`` nearest ``memory`` (N, D) features by cosine similarity."""
    sim = F.normalize(queries.float(), dim=1) @ F.normalize(memory.float(), dim=1).t()  # (Q, N)
    top, index = sim.topk(min(k, len(memory)), dim=1)  # (Q, k)
    votes = torch.zeros(len(queries), num_classes, device=queries.device)
    # exp((s - 1) / T): the vote ratios of exp(s / T), without overflow at small T
    votes.scatter_add_(1, memory_labels[index], ((top - 1) / temperature).exp())
    return votes / votes.sum(dim=1, keepdim=True)


def knn_predict(memory: torch.Tensor, memory_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07) -> torch.Tensor:
    """Predicted labels (Q,): the class with the largest k-NN vote."""
    return knn_probabilities(memory, memory_labels, queries, num_classes, k, temperature).argmax(dim=1)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                 test_x: np.ndarray, num_classes: int, c_grid: Sequence[float] = C_GRID,
                 seed: int = 0) -> tuple[np.ndarray, dict]:
    """Test probabilities (N_test, C) of a logistic regression on the training features, with ``C`` chosen on
    the validation features; and ``{"C": chosen, "val_auc": {C: AUC}}``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    train_x, val_x, test_x = (scaler.transform(x) for x in (train_x, val_x, test_x))

    def probabilities(model, x: np.ndarray) -> np.ndarray:  # (N, C), zero for classes absent from training
        out = np.zeros((len(x), num_classes))
        out[:, model.classes_] = model.predict_proba(x)
        return out

    best, scores = None, {}
    for c in sorted(c_grid):
        model = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(train_x, train_y)
        val = point_metrics(val_y, probabilities(model, val_x))
        score = val["auc"] if not np.isnan(val["auc"]) else val["accuracy"]
        scores[c] = score
        if best is None or score > best[0]:
            best = (score, c, model)
    return probabilities(best[2], test_x), {"C": best[1], "val_auc": scores}


class FrozenProbe:
    """Evaluate the frozen encoder of ``network`` by ``protocol`` (``linear`` or ``knn``) and write the test
    report (``metrics.json``, ``predictions.csv``, figures) like fine-tuning's.

    Args:
        network: the classifier, its pre-trained weights loaded; only its pooled features are used.
        protocol: ``linear`` or ``knn``.
        train_dataset: the whole training split (no augmentation); the labelled subset is drawn from it.
        val_dataset, test_dataset: the validation (chooses the linear probe's ``C``) and test splits.
        output_dir: where the report goes.
        class_names: names of the C classes.
        label_fraction, seed: the labelled subset, as fine-tuning draws it.
        device, batch_size: of the feature pass.
        k, temperature: of the k-NN vote.
        c_grid: the linear probe's candidate ``C`` values.
        n_bootstrap: resamples of the test intervals.
        feature_cache: a folder for the features of each split, keyed by the network's weights, the split's
            samples and its first image as loaded, so evaluating many subsets of one encoder computes them once;
            ``None`` (or ``"none"``): not kept.
        extra: key-value pairs recorded in ``metrics.json``.
        figures: also draw the confusion matrix and ROC curves.
    """

    def __init__(self, network: nn.Module, protocol: str, train_dataset, val_dataset, test_dataset,
                 output_dir: str | os.PathLike, class_names: Sequence[str], label_fraction: float = 1.0,
                 seed: int = 0, device: torch.device | str = "cpu", batch_size: int = 64, k: int = 20,
                 temperature: float = 0.07, c_grid: Sequence[float] = C_GRID, n_bootstrap: int = 1000,
                 feature_cache: str | os.PathLike | None = None, extra: dict | None = None,
                 figures: bool = True) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
        self.network, self.protocol = network, protocol
        self.datasets = {"train": train_dataset, "val": val_dataset, "test": test_dataset}
        self.output_dir, self.class_names = output_dir, list(class_names)
        self.label_fraction, self.seed = label_fraction, seed
        self.device, self.batch_size, self.k, self.temperature = torch.device(device), batch_size, k, temperature
        self.c_grid, self.n_bootstrap = tuple(c_grid), n_bootstrap
        # "none" as a command line gives it (MONAI drops a None override)
        self.feature_cache = None if str(feature_cache).lower() in ("none", "") else feature_cache
        self.extra, self.figures = dict(extra or {}), as_bool(figures, "figures")
        self._features: dict | None = None

    def _weights_sha256(self) -> str:
        digest = hashlib.sha256()
        for name, tensor in getattr(self.network, "module", self.network).state_dict().items():
            if name.startswith("fc."):  # the head is bypassed: features do not depend on it
                continue
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def features(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, list[str] | None]]:
        """``{split: (features, labels, patients)}``, computed once (or read from ``feature_cache``)."""
        if self._features is None:
            weights = self._weights_sha256() if self.feature_cache else ""
            self._features = {}
            for split, data in self.datasets.items():
                cached = None
                if self.feature_cache:
                    # the samples, and the first one as loaded (the preprocessing: window, size, channels)
                    first = np.ascontiguousarray(torch.as_tensor(data[0]["image"]).numpy())
                    key = hashlib.sha256(f"{weights}:{fingerprint(data)}:{first.shape}".encode() + first.tobytes())
                    key = key.hexdigest()[:32]
                    cached = Path(self.feature_cache) / f"{split}_{key}.pt"
                if cached is not None and cached.is_file():
                    stored = torch.load(cached, weights_only=True)
                    self._features[split] = (stored["features"], stored["labels"], stored["patients"])
                    continue
                self._features[split] = encode(self.network, data, self.device, self.batch_size)
                if cached is not None:
                    x, y, p = self._features[split]
                    with atomic_path(cached) as tmp:
                        torch.save({"features": x, "labels": y, "patients": p}, tmp)
        return self._features

    def probabilities(self, protocol: str, label_fraction: float, seed: int) -> tuple[np.ndarray, dict]:
        """Test probabilities (N_test, C) of ``protocol`` trained on the subset (``label_fraction``, ``seed``)
        of the training split, and what was chosen (the subset size, the linear probe's ``C``)."""
        feats = self.features()
        train_x, train_y, _ = feats["train"]
        subset = stratified_subset_indices(self.datasets["train"].data, label_fraction, seed)
        train_x, train_y = train_x[subset], train_y[subset]  # (n, D), (n,)
        num_classes = len(self.class_names)
        info: dict = {"protocol": protocol, "n_train": len(subset)}
        if protocol == "knn":
            probs = knn_probabilities(train_x, train_y, feats["test"][0], num_classes, self.k, self.temperature)
            info.update(k=min(self.k, len(subset)), temperature=self.temperature)
            return probs.numpy(), info
        if protocol == "linear":
            probs, chosen = linear_probe(train_x.numpy(), train_y.numpy(), feats["val"][0].numpy(),
                                         feats["val"][1].numpy(), feats["test"][0].numpy(), num_classes,
                                         self.c_grid, seed)
            info.update(C=chosen["C"], val_auc_by_C={f"{c:g}": v for c, v in chosen["val_auc"].items()})
            return probs, info
        raise ValueError(f"protocol {protocol!r} is not a frozen-encoder protocol; expected linear or knn")

    def evaluate(self, protocol: str, label_fraction: float, seed: int, output_dir: str | os.PathLike) -> dict:
        """The test report of one protocol and labelled subset, written to ``output_dir``."""
        probs, info = self.probabilities(protocol, label_fraction, seed)
        _, labels, patients = self.features()["test"]
        return write_classification_report(labels.numpy(), probs, patients, output_dir, self.class_names,
                                           self.n_bootstrap, seed, {**self.extra, **info,
                                                                    "label_fraction": label_fraction},
                                           self.figures)

    def run(self) -> dict:
        """The configured protocol and subset."""
        return self.evaluate(self.protocol, self.label_fraction, self.seed, self.output_dir)
