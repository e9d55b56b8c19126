"""How close a fine-tuned pruned model stays to the original, on held-out data (onnxruntime).

After fine-tuning the exactness oracle no longer applies (the weights moved on purpose), so the
report states fidelity instead:
- `top1_agreement`: share of samples whose arg-max class is the same in both models
  (first classifier output);
- `max_relative_error`: max |pruned − original| / max(1, max |original|) over all outputs;
- `mean_abs_error`: mean |pruned − original| over all output elements;
- `accuracy_original` / `accuracy_pruned`: top-1 against the labels, when there are labels.
"""
from __future__ import annotations

import numpy as np
import onnx

from onnxprune.model.batch import make_batch_free
from onnxprune.model.outputs import first_classifier, output_kinds
from onnxprune.model.runtime import session


def _runner(model: onnx.ModelProto):
    """Run whole batches when the model is batch-free, else one sample at a time."""
    free, why = make_batch_free(model)
    sess = session(free)
    if why is None:
        return lambda feeds: sess.run(None, feeds)

    def one_by_one(feeds):
        n = len(next(iter(feeds.values())))
        runs = [sess.run(None, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(n)]
        return [np.concatenate([r[j] for r in runs]) for j in range(len(runs[0]))]
    return one_by_one


def fidelity(original: onnx.ModelProto, pruned: onnx.ModelProto, data, batch_size: int = 64
             ) -> dict | None:
    """Compare the two models on every sample of `data` (a calibrate.data.CalibrationData);
    None when `data` is empty."""
    if data.num_samples == 0:
        return None
    run_a, run_b = _runner(original), _runner(pruned)
    cls = first_classifier(output_kinds(original))
    agree = correct_a = correct_b = seen = 0
    max_err, abs_sum, abs_count, scale = 0.0, 0.0, 0, 1.0
    for batch in data.batches(batch_size):
        a, b = run_a(batch.inputs), run_b(batch.inputs)
        for x, y in zip(a, b):
            diff = np.abs(x.astype(np.float64) - y)
            max_err = max(max_err, float(diff.max(initial=0)))
            abs_sum, abs_count = abs_sum + float(diff.sum()), abs_count + diff.size
            scale = max(scale, float(np.abs(x).max(initial=0)))
        seen += len(a[0])
        if cls is not None:
            pa, pb = a[cls].argmax(1), b[cls].argmax(1)
            agree += int((pa == pb).sum())
            if batch.labels is not None:
                correct_a += int((pa == batch.labels).sum())
                correct_b += int((pb == batch.labels).sum())
    record = {"samples": seen, "data": data.description,
              "max_relative_error": max_err / scale, "mean_abs_error": abs_sum / max(abs_count, 1)}
    if cls is not None:
        record["top1_agreement"] = agree / seen
        if data.has_labels:
            record["accuracy_original"] = correct_a / seen
            record["accuracy_pruned"] = correct_b / seen
    return record
