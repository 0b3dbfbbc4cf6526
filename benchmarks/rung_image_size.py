"""Would a smaller image be a fair first rung? The rank correlation of configs at two image sizes.

Issue 17 asks whether a lower image size could be the search's first rung: train many configs
small, keep the promising ones for the full size. That is only sound if the small size ranks
configurations the way the full size does. This script samples N configurations of a space at
the SMALL size (so each also fits the large one: a space's depth range only grows with size),
replays the same parameters at the LARGE size (Optuna's FixedTrial), trains each for --epochs at
both sizes on the same split, and records both val objectives, the Spearman rank correlation
(pandas' rank-then-Pearson) and the time per config at each size.

With --storage URL (a finished study), the configs are instead that study's top --configs trials
(presets included, as `ranked` orders them): their small-size values are the study's own (the
size and epochs they were searched at), and each is trained again at --large on the study's own
images and split, with its own seed and epochs (`export`'s `retrain`, val early stopping as in the
search). That answers the question export --image-size asks: does the searched ranking hold at
the size the winners are trained at?

Usage: python benchmarks/rung_image_size.py [--space cnn] [--small 16] [--large 32] [--configs 10]
       [--epochs 3] --data DIR [--limit N]
       python benchmarks/rung_image_size.py --storage sqlite:///W/search/NAME.db [--study NAME] --large 64 --configs 8
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _record import add_data_argument, record  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_argument(p, required=False)  # --storage: the study names its data
    p.add_argument("--space", default="cnn")
    p.add_argument("--small", type=int, default=16)
    p.add_argument("--large", type=int, default=32)
    p.add_argument("--configs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--storage", help="a finished study's storage URL: rank its top --configs trials instead of random draws")
    p.add_argument("--study", help="the study's name (default: the only study in --storage)")
    p.add_argument("--out")
    args = p.parse_args()
    if not args.data and not args.storage:
        p.error("--data DIR (or $AGESEARCH_DATA) or --storage URL is required")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.storage:
        return from_study(args)

    import dataclasses

    import optuna
    import pandas as pd

    from agesearch.search.loop.run import DataSpec, load_data
    from agesearch.search.training.fit import fit
    from agesearch.spaces import get_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = get_space(args.space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed))
    params = []
    while len(params) < args.configs:
        t = study.ask()
        try:
            model_cfg, train_cfg = space(t, args.small)
            space(optuna.trial.FixedTrial(t.params), args.large)
        except ValueError:
            study.tell(t, state=optuna.trial.TrialState.FAIL)
            continue
        if model_cfg.backbone != "none":
            study.tell(t, state=optuna.trial.TrialState.FAIL)
            continue
        study.tell(t, 0.0)
        params.append(t.params)
    rows = []
    for size in (args.small, args.large):
        _, _, data = load_data(DataSpec(data=args.data, image_size=size, limit=args.limit, seed=args.seed))
        for i, ps in enumerate(params):
            model_cfg, train_cfg = space(optuna.trial.FixedTrial(ps), size)
            start = time.perf_counter()
            try:
                result = fit(model_cfg, dataclasses.replace(train_cfg, epochs=args.epochs), data)
                value = result.objective
            except Exception as e:  # a config that diverges at one size: ranked last there
                print(f"config {i} at {size} px failed: {type(e).__name__}: {e}"[:200], flush=True)
                value = float("inf")
            rows.append({"config": i, "size": size, "objective": value, "seconds": time.perf_counter() - start})
            print(f"config {i} at {size} px: objective {value:.4f} in {rows[-1]['seconds']:.0f} s", flush=True)
    df = pd.DataFrame(rows).pivot(index="config", columns="size")
    obj = df["objective"].replace(float("inf"), 99.0)
    rho = obj[args.small].rank().corr(obj[args.large].rank())
    top_small = set(obj[args.small].nsmallest(max(1, args.configs // 3)).index)
    top_large = set(obj[args.large].nsmallest(max(1, args.configs // 3)).index)
    secs = df["seconds"].sum()
    lines = [
        f"space {args.space}, {args.configs} random configs (seed {args.seed}) that fit {args.small} px, {args.epochs} epochs each at {args.small} and {args.large} px, data {args.data}" + (f" (limit {args.limit})" if args.limit else ""),
        f"Spearman rank correlation of the val objectives, {args.small} vs {args.large} px: **{rho:.2f}**",
        f"the best third at {args.small} px holds {len(top_small & top_large)} of the best third at {args.large} px ({len(top_large)})",
        f"time for all configs: {secs[args.small]:.0f} s at {args.small} px, {secs[args.large]:.0f} s at {args.large} px",
    ]
    table = [f"| config | objective {args.small} px | objective {args.large} px |", "|---|---|---|"]
    table += [f"| {i} | {obj.loc[i, args.small]:.4f} | {obj.loc[i, args.large]:.4f} |" for i in obj.index]
    record(f"Image size as a first rung: rank correlation {args.small} vs {args.large} px", lines, out=args.out, table=table)


def from_study(args) -> None:
    """The study's top configs: their searched values against a retraining at --large."""
    import optuna
    import pandas as pd

    from agesearch.search.export.trial import retrain, study_data_at
    from agesearch.search.store.study import ranked

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    top = ranked(study)[: args.configs]
    small = int(top[0].user_attrs["model_config"]["image_size"])
    _, ds, split = study_data_at(study, top, args.large)
    rows = []
    for t in top:
        start = time.perf_counter()
        value = retrain(study, t, ds, split, image_size=args.large).result.objective
        rows.append({"trial": t.number, "preset": t.user_attrs.get("preset", ""), "small": t.value, "large": value, "seconds": time.perf_counter() - start})
        print(f"trial {t.number}: {small} px {t.value:.4f}, {args.large} px {value:.4f} in {rows[-1]['seconds']:.0f} s", flush=True)
    df = pd.DataFrame(rows).set_index("trial")
    rho = df["small"].rank().corr(df["large"].rank())
    third = max(1, len(df) // 3)
    held = len(set(df["small"].nsmallest(third).index) & set(df["large"].nsmallest(third).index))
    lines = [
        f"study {study.study_name}: its top {len(df)} trials (searched at {small} px), each trained again at {args.large} px on the study's split, own seed and epochs",
        f"Spearman rank correlation of the val objectives, {small} (searched) vs {args.large} px: **{rho:.2f}**",
        f"the best third at {small} px holds {held} of the best third at {args.large} px ({third}); best at {small} px: trial {df['small'].idxmin()}, at {args.large} px: trial {df['large'].idxmin()}",
        f"time at {args.large} px: {df['seconds'].sum():.0f} s",
    ]
    table = [f"| trial | preset | objective {small} px (searched) | objective {args.large} px |", "|---|---|---|---|"]
    table += [f"| {i} | {r.preset} | {r.small:.4f} | {r.large:.4f} |" for i, r in df.iterrows()]
    record(f"Does the searched ranking hold at {args.large} px? Top {len(df)} trials of {study.study_name}", lines, out=args.out, table=table)


if __name__ == "__main__":
    main()
