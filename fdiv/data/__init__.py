"""The data layer of fdiv's distillation experiments.

- :func:`load` / :func:`names`: datasets with random access by example index
  (:class:`Dataset`: ``num_classes``, ``input_shape``, ``len``, ``get(indices)``); splits
  ``train``, ``test`` and, with ``valid_fraction > 0``, ``valid`` carved from the training split
  by a fixed rule (:func:`validation_indices`).
- :func:`train_indices`: the examples of training step ``s``, a pure function of
  ``(seed, s)``, which makes resuming exact; :func:`process_slice` splits a global batch
  between processes; :func:`eval_batches` covers an evaluation split with padded, masked
  batches.
- :func:`augment_images`: jittable random crop + horizontal flip.

A training loop reads, at step ``s``::

    idx = data.train_indices(s, num_examples=len(ds), batch_size=B, seed=seed)
    x, y = ds.get(data.process_slice(idx, process_index=p, process_count=P))
"""

from fdiv.data._augment import augment_images
from fdiv.data._datasets import (
    ArrayDataset,
    ArrayDict,
    Dataset,
    Subset,
    TFDSDataset,
    load,
    names,
    validation_indices,
)
from fdiv.data._sampling import eval_batches, process_slice, train_indices
from fdiv.data.mixture import (
    GaussianMixture,
    mixture_denoiser,
    mixture_log_prob,
    mixture_sample,
    mixture_score,
    ring_mixture,
)

__all__ = [
    "ArrayDataset",
    "ArrayDict",
    "Dataset",
    "GaussianMixture",
    "Subset",
    "TFDSDataset",
    "augment_images",
    "eval_batches",
    "load",
    "mixture_denoiser",
    "mixture_log_prob",
    "mixture_sample",
    "mixture_score",
    "names",
    "process_slice",
    "ring_mixture",
    "train_indices",
    "validation_indices",
]
