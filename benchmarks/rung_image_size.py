"""Would a smaller image be a fair first rung? The rank correlation of configs at two image sizes.

Issue 17 asks whether a lower image size could be the search's first rung: train many configs
small, keep the promising ones for the full size. That is only sound if the small size ranks
configurations the way the full size does. This script samples N configurations of a space at
the SMALL size (so each also fits the large one: a space's depth range only grows with size),
replays the same parameters at the LARGE size (Optuna's FixedTrial), trains each for --epochs at
both sizes on the same split, and records both val objectives, the Spearman rank correlation
(pandas' rank-then-Pearson) and the time per config at each size.

Usage: python benchmarks/rung_image_size.py [--space cnn] [--small 16] [--large 32] [--configs 10]
       [--epochs 3] --data DIR [--limit N]
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
    add_data_argument(p)
    p.add_argument("--space", default="cnn")
    p.add_argument("--small", type=int, default=16)
    p.add_argument("--large", type=int, default=32)
    p.add_argument("--configs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--limit", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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


if __name__ == "__main__":
    main()
