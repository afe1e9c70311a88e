"""Write the digits files of the README's centralized walkthrough into the current folder.

- ``examples.npy``: 5 digits for ``fedge edge predict``, float32 of shape (5, 1, 8, 8);
- ``examples.json``: the same 5 as ``{"instances": [...]}``, a ``/predict`` request body;
- ``labelled.json``: 100 labelled digits as ``{"instances": [...], "labels": [...]}``, the
  new samples a device sends with ``fedge edge send``.

Inputs are scaled as fedge's digits loader scales them (:func:`fedge.data.digits.load_digits`):
scikit-learn's pixel counts 0..16 divided by 16, so every value lies in [0, 1], in the
model's input shape (1, 8, 8). A device's own inputs must be scaled the same way.

Run it as ``python examples/digits_samples.py`` (needs scikit-learn: the ``digits`` extra).
"""

import json

import numpy as np
from sklearn.datasets import load_digits

digits = load_digits()
x = (digits.images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
y = digits.target.astype(int)

np.save("examples.npy", x[:5])
with open("examples.json", "w") as f:
    json.dump({"instances": x[:5].tolist()}, f)
with open("labelled.json", "w") as f:
    json.dump({"instances": x[-100:].tolist(), "labels": y[-100:].tolist()}, f)
print("wrote examples.npy, examples.json (5 digits) and labelled.json (100 labelled digits)")
