# Copyright 2026 The MiSTER-E authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Metrics for emotion recognition in conversations (ERC), as an `evaluate` module.

The file is self-contained on purpose: `evaluate.load` copies this single script into its module cache and
imports it from there, so it can import installed libraries but nothing relative to the `mister_e` package.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, f1_score, recall_score


IGNORE_INDEX = -100

_CITATION = """\
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and Varoquaux, G. and Gramfort, A. and Michel, V. and Thirion, B. and Grisel, O. and
          Blondel, M. and Prettenhofer, P. and Weiss, R. and Dubourg, V. and Vanderplas, J. and Passos, A. and
          Cournapeau, D. and Brucher, M. and Perrot, M. and Duchesnay, E.},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""

_DESCRIPTION = """\
The usual ERC scores in one pass: support-weighted F1 (the headline metric of IEMOCAP and MELD results),
macro F1, accuracy, unweighted average recall (UAR, also called balanced accuracy) and the F1 of every class.
References equal to -100 mark padded utterances of a batch of conversations and are ignored.

Macro F1 and UAR average over the classes present in the references, like sklearn's `balanced_accuracy_score`:
a class with no reference utterance in a split has no recall to average, and counting it as 0 would penalise
the split rather than the model. Per-class F1 lists every class; a class with no reference utterance has no F1
(`None`), whether or not the model predicted it: 0 would read as "the model fails on this class" where there was
nothing to score, and its predictions are errors on utterances of other classes, which already lower those classes'
recall and F1, the accuracy and UAR. Weighted F1 gives such a class no weight, and macro F1 leaves it out.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): Predicted class ids, one per utterance.
    references (`list` of `int`): True class ids; -100 marks padding and is dropped with its prediction.
    label_names (`list` of `str`, *optional*): Class names in class-id order, used as keys of `f1_per_class`.
    num_labels (`int`, *optional*): Number of classes when `label_names` is not given; defaults to the largest
        id seen plus one.
Returns:
    weighted_f1 (`float`): F1 averaged over classes weighted by their support.
    macro_f1 (`float`): Unweighted mean F1 over the classes present in the references.
    accuracy (`float`): Fraction of utterances predicted correctly.
    unweighted_recall (`float`): Mean per-class recall over the classes present in the references (UAR).
    f1_per_class (`dict` of `str` to `float` or `None`): F1 of every class, keyed by class name (or id as a string);
        `None` for a class with no reference utterance.
Examples:
    >>> erc_metric = evaluate.load("path/to/erc_metrics.py")
    >>> results = erc_metric.compute(
    ...     predictions=[0, 1, 1, 2], references=[0, 1, 2, -100], label_names=["neutral", "joy", "anger"]
    ... )
    >>> results["accuracy"]
    0.6666666666666666
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ErcMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html"],
        )

    def _compute(self, predictions, references, label_names=None, num_labels=None):
        predictions = np.asarray(predictions, dtype=np.int64)
        references = np.asarray(references, dtype=np.int64)
        keep = references != IGNORE_INDEX
        predictions, references = predictions[keep], references[keep]
        if references.size == 0:
            raise ValueError("No references left once padding (-100) is removed.")

        if label_names is not None:
            if num_labels is not None and num_labels != len(label_names):
                raise ValueError(f"num_labels={num_labels} but {len(label_names)} label_names were given.")
            num_labels = len(label_names)
        elif num_labels is None:
            num_labels = int(max(predictions.max(), references.max())) + 1
        names = [str(name) for name in label_names] if label_names is not None else [str(i) for i in range(num_labels)]
        ids = np.concatenate([predictions, references])
        if ids.min() < 0 or ids.max() >= num_labels:
            raise ValueError(f"Class ids must lie in [0, {num_labels}), got values in [{ids.min()}, {ids.max()}].")

        all_labels = list(range(num_labels))
        present = np.unique(references).tolist()
        per_class = f1_score(references, predictions, labels=all_labels, average=None, zero_division=0)
        return {
            "weighted_f1": float(
                f1_score(references, predictions, labels=all_labels, average="weighted", zero_division=0)
            ),
            "macro_f1": float(f1_score(references, predictions, labels=present, average="macro", zero_division=0)),
            "accuracy": float(accuracy_score(references, predictions)),
            "unweighted_recall": float(
                recall_score(references, predictions, labels=present, average="macro", zero_division=0)
            ),
            "f1_per_class": {name: float(score) if index in present else None
                             for index, (name, score) in enumerate(zip(names, per_class))},
        }
