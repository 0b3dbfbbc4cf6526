"""One preset, trained again with one or two training knobs changed: which knobs move its val objective.

Usage: python benchmarks/preset_training_knobs.py PRESET 'JSON'
  JSON maps a label to [model changes, training changes], e.g.
  '{"base": [{}, {}], "cosine": [{}, {"lr_schedule": "cosine"}]}'
The 5k at 32 px, the default split (seed 0), 9 epochs, patience 5; no fixed seed, so each variant
starts from other random weights: one run each, and a few percent is within seed noise (write-up D
alone scored 0.799 in one search run and 0.872 here). Prints one line per variant.
The evidence behind the sampler's RECIPE_WEIGHT (search/loop/sampling.py).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

from agesearch.models.presets import get_preset
from agesearch.search.data.images import load_faces, split_indices
from agesearch.search.training.fit import TrainingData, fit

DATA = "../shared/data/utkface-5k"


def main() -> None:
    preset, variants = sys.argv[1], json.loads(sys.argv[2])
    ds = load_faces(DATA, 32, seed=0)
    data = TrainingData.from_split(ds, split_indices(len(ds), seed=0))
    model0, train0 = get_preset(preset).configs(32)
    train0 = dataclasses.replace(train0, epochs=9, patience=5)
    for label, (model_changes, train_changes) in variants.items():
        start = time.time()
        r = fit(dataclasses.replace(model0, **model_changes), dataclasses.replace(train0, **train_changes), data)
        print(f"{label:20s} objective {r.objective:.4f}  val age MAE {r.val_age_mae:.2f} y  gender accuracy {r.val_gender_accuracy:.3f}  "
              f"best epoch {r.best_epoch}  {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
