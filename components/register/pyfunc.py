"""The registered model: an MLflow pyfunc that samples labelled image + mask pairs from the EMA generator.

Input: a DataFrame with a ``class`` column (class name), an ``n`` column (samples of that class) and an optional
``seed`` column (see :func:`signature`). Output: a float32 array (sum(n), 2, S, S): channel 0 the image in
[-1, 1], channel 1 the binary lesion mask.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper of the trained generator."""

    def load_context(self, context: Any) -> None:
        """Load the generator weights logged as the ``generator`` artifact."""
        from components.gan.sampling import load_generator

        self.generator, self.meta = load_generator(context.artifacts["generator"])
        self.classes = list(self.meta["classes"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - MLflow reads hints as a schema
        """Sample ``n`` pairs for each requested class."""
        from components.gan.sampling import generate

        labels: list[int] = []
        seed = 0
        for _, row in model_input.iterrows():
            cls = row["class"]
            if isinstance(cls, str):
                if cls not in self.classes:
                    raise ValueError(f"unknown class {cls!r}; the model knows {', '.join(self.classes)}")
                idx = self.classes.index(cls)
            else:
                idx = int(cls)
                if not 0 <= idx < len(self.classes):
                    raise ValueError(f"class index {idx} out of range 0..{len(self.classes) - 1}")
            labels += [idx] * int(row.get("n", 1))
            seed = int(row.get("seed", seed))
        images, masks = generate(self.generator, np.asarray(labels, dtype=np.int64), seed=seed)
        return np.stack([images, masks.astype(np.float32)], axis=1)


def signature(image_size: int) -> Any:
    """The model signature: which classes and how many in, image + mask tensors out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    inputs = Schema([ColSpec("string", "class"), ColSpec("long", "n"), ColSpec("long", "seed", required=False)])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, 2, image_size, image_size))])
    return ModelSignature(inputs=inputs, outputs=outputs)
