"""One preset, trained again with one or two training knobs changed: which knobs move its val objective.

Usage: python benchmarks/preset_training_knobs.py --data DIR PRESET 'JSON'
  JSON maps a label to [model changes, training changes], e.g.
  '{"base": [{}, {}], "cosine": [{}, {"lr_schedule": "cosine"}]}'
The data (the 5k in RESULTS.md) at 32 px, the default split (seed 0), 9 epochs, patience 5; no fixed seed, so each variant
starts from other random weights: one run each, and a few percent is within seed noise (write-up D
alone scored 0.799 in one search run and 0.872 here). Prints one line per variant.
The evidence behind the sampler's RECIPE_WEIGHT (search/loop/sampling.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _record import add_data_argument  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(p)
    p.add_argument("preset", help="a preset's name (`agesearch presets`)")
    p.add_argument("variants", type=json.loads, metavar="JSON", help="label -> [model changes, training changes]")
    args = p.parse_args()
    preset, variants = args.preset, args.variants

    from agesearch.models.presets import get_preset
    from agesearch.search.data.images import load_faces, split_indices
    from agesearch.search.data.study_data import data_folder
    from agesearch.search.training.fit import TrainingData, fit

    ds = load_faces(data_folder(args.data), 32, seed=0)
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
