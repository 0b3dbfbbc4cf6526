"""`agesearch run` without argparse: `run_search(space, data=..., ...)` from Python.

It does, in order: look the space up, load and split the data, create or resume the study,
enqueue the presets of a new study as baseline trials, then run trials in this process or on
Ray until the study holds `n_trials` finished ones.

Seeds. `seed` is the DATA seed: it fixes the split and the `limit` subset, and must match
when a study is resumed (another split would make the trials incomparable). The sampler is
seeded PER TRIAL: trial number N draws its parameters with the seed
``sha256(f"{sampler_seed}:{N}")`` (first 4 bytes), `sampler_seed` defaulting to `seed`.
Optuna hands out trial numbers atomically in the storage, so
  - one uninterrupted run is reproducible (same command, same trials 0..N-1, same seeds);
  - a resume, and every further process on the same study, gets trial numbers no one used
    before, hence seeds no one used before: nothing is drawn twice;
  - `sampler_seed` may differ between runs of one study (`--sampler-seed`) to draw others.
`n_trials` is the study's total across processes: before asking for a trial, a process
counts finished plus running trials (of every process), so several processes on one study
stop together at `n_trials` (one more at most, when two ask at the same instant).

Ctrl-C fails the running trial(s), enqueues their parameters again (they run first on
resume and do not count toward `n_trials`) and raises `SearchInterrupted` with one line to
show; a second Ctrl-C exits at once.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from agesearch.search.errors import UsageError
from agesearch.search.loop.loop import InProcessExecutor, TrialLoop
from agesearch.search.loop.options import PRUNERS, RunOptions
from agesearch.search.loop.progress import EpochProgress, ProgressLine
from agesearch.search.loop.sampling import make_sampler, trial_seed
from agesearch.search.loop.trial import TrainJob, check_cost, sample_configs, train_job
from agesearch.search.store import study as st
from agesearch.spaces import SPACE_VERSIONS

@dataclass(frozen=True)
class DataSpec:
    """Where the images come from and how they are split; recorded in the study's metadata."""

    data: str = "synthetic"  # a folder of UTKFace-named images, or "synthetic"
    image_size: int = 128  # pixels, square
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, val, test fractions
    seed: int = 0  # the data seed: split and subset
    limit: int | None = None  # a seeded random subset of this many images
    synthetic_count: int = 1200  # images of the built-in synthetic set
    cache_dir: Path | None = None  # decoded-image cache

    def __post_init__(self) -> None:
        """The CLI's argument types, for the Python API: one UsageError naming the field."""
        from agesearch.search.data.images import check_split

        def invalid(name: str, rule: str) -> UsageError:
            return UsageError(f"Invalid value for `{name}`: {rule}. Received: {name}={getattr(self, name)!r}")

        for name, low in (("image_size", 16), ("synthetic_count", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise invalid(name, f"must be an integer >= {low}")
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1):
            raise invalid("limit", "must be a positive integer or None")
        try:
            check_split(self.split)
        except ValueError as e:
            raise UsageError(str(e)) from None


def load_data(spec: DataSpec):
    """Load and split the data; prints one progress line. Returns (dataset, split, TrainingData)."""
    from agesearch.search.data.duplicates import split_faces
    from agesearch.search.data.images import load_faces
    from agesearch.search.data.study_data import data_folder
    from agesearch.search.training.fit import TrainingData  # imports Keras

    folder = data_folder(spec.data, synthetic_count=spec.synthetic_count, cache_dir=spec.cache_dir)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_faces(folder, spec.image_size, limit=spec.limit, seed=spec.seed, cache_dir=spec.cache_dir, progress=lambda m: print(m, flush=True))
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    # Near-duplicate photos stay on one side, so val and test never hold a copy of a train image.
    split = split_faces(ds, spec.split, seed=spec.seed, cache_dir=spec.cache_dir)
    print(
        f"data: {len(ds)} images at {spec.image_size} px from {folder} in {time.perf_counter() - start:.1f}s; "
        f"split {len(split.train)}/{len(split.val)}/{len(split.test)} (train/val/test)",
        flush=True,
    )
    return ds, split, TrainingData.from_split(ds, split)


def study_meta(spec: DataSpec, space: str, objective: str, ds, split, baselines) -> dict:
    """The study's metadata (user attr "agesearch"): what `study_data` needs to reload the data."""
    b = baselines
    return {
        "space": space,
        "space_version": SPACE_VERSIONS.get(space),
        "objective": objective,
        "data": "synthetic" if spec.data == "synthetic" else str(Path(spec.data).expanduser().resolve()),
        "synthetic_count": spec.synthetic_count if spec.data == "synthetic" else None,
        "limit": spec.limit,
        "fingerprint": ds.fingerprint,
        "images": len(ds),
        "image_size": spec.image_size,
        "split": list(spec.split),
        "split_method": "grouped-phash",  # studies without this key used data.split_indices
        "seed": spec.seed,
        "split_sizes": [len(split.train), len(split.val), len(split.test)],
        "baselines": {"median_age": b.median_age, "majority_gender": b.majority_gender, "mae_trivial": b.mae_trivial, "error_trivial": b.error_trivial, "age_scale": b.age_scale},
    }


def run_search(space: str | RunOptions, *, data: DataSpec = DataSpec(), callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
               **options) -> optuna.Study:
    """Run or resume a search until the study holds `n_trials` finished trials.

    `run_search("train", data=DataSpec(...), n_trials=8, epochs=6)` or
    `run_search(RunOptions(...), data=...)`: the keyword arguments are RunOptions' fields
    (loop/options.py documents each). See the module docstring for seeds, several processes
    and Ctrl-C. `callbacks` are Optuna-style `(study, frozen_trial)` calls after each trial
    this process finishes, as in `study.optimize(..., callbacks=[...])` (`study.stop()` in one
    ends the search once the running trials are done); with `mlflow`, an MlflowTracker comes
    first, and the models of trials out of `keep_models` are removed after them all.

    Raises:
        UsageError, DataError, StorageError, StudyMismatch, DistributedError: bad input, one line.
        SearchInterrupted: Ctrl-C; the running trials are enqueued again.
    """
    o = (space if isinstance(space, RunOptions) else RunOptions(space=space, **options)).check(data.image_size)
    from agesearch.search.store.artifacts import STORE_ATTR, KeepBestModels, record_store, resolve_spec, store_for
    from agesearch.spaces import baseline_trials, get_space, space_grid, with_backbone_weights

    fn = with_backbone_weights(get_space(o.space), o.backbone_weights)
    url = o.storage or st.default_storage(o.study)
    presets = [] if o.baselines is False else baseline_trials(o.space, data.image_size, o.baselines)
    spec = resolve_spec(o.artifacts, url, o.study)
    store_for(spec)  # a missing boto3 or a folder that cannot be made fails here, before the data loads
    trackers = tracker_callbacks(o)  # an MLflow URI that cannot be used too

    ds, split, train_data = load_data(data)
    grid_of = space_grid(o.space)
    grid = grid_of(data.image_size) if grid_of is not None else None
    sampler = make_sampler(o.sampler_name, data.seed if o.sampler_seed is None else o.sampler_seed, grid=grid, n_baselines=len(presets),
                           space=fn, image_size=data.image_size, cost_cap=lambda s: cost_cap(s, o))
    pruner = PRUNERS[o.pruner_name].make(o.epochs, len(presets))
    rdb = st.open_storage(url, max_retry=o.max_retries)
    study = st.create_or_resume(o.study, rdb, directions=["minimize", "maximize"] if o.multi else ["minimize"],
                                meta=study_meta(data, o.space, o.objective, ds, split, train_data.baselines), sampler=sampler, pruner=pruner)
    enqueued = st.enqueue_baselines(study, presets)
    done = st.finished_count(study)
    b = train_data.baselines
    print(
        f"study {o.study} in {url}: {done} finished, {max(o.n_trials - done, 0)} to run "
        f"(space {o.space}, sampler {'grid' if grid is not None else o.sampler_name}, pruner {o.pruner_name}, {o.epochs} epochs, "
        f"trivial val age MAE {b.mae_trivial:.2f} y, gender error {b.error_trivial:.3f})"
        + (f"; {enqueued} presets enqueued first" if enqueued else ""),
        flush=True,
    )
    if o.n_trials > done:
        if o.artifacts is None:  # a resume keeps the store the study was started with
            spec = study.user_attrs.get(STORE_ATTR, spec)
        record_store(study, spec)
        sample = job_sampler(study, fn, o, data.image_size, spec)
        _execute(study, sample, train_data, o, data.cache_dir,
                 callbacks=[*trackers, *callbacks, KeepBestModels(store_for(spec), o.keep_models), ProgressLine(o.multi)])
    from agesearch.search.report.summary import summarize

    print(summarize(study), flush=True)
    return study


def tracker_callbacks(o: RunOptions) -> list:
    """The callbacks of `--mlflow` (its URI checked now, before the data loads); a line for each tracker."""
    if o.tensorboard is not None:
        print(f"tensorboard: each trial's epochs go to {Path(o.tensorboard).expanduser().resolve()}/trial-N "
              f"(tensorboard --logdir {o.tensorboard})", flush=True)
    if o.mlflow is None:
        return []
    from agesearch.search.loop.trackers import MlflowTracker

    tracker = MlflowTracker(o.mlflow, o.study)
    print(f"mlflow: each finished trial becomes a run of experiment {o.study!r} in {o.mlflow}", flush=True)
    return [tracker]


def cost_cap(study: optuna.Study, o: RunOptions) -> float | None:
    """The most FLOPs per image a draw may cost: --max-flops, and --max-flops-ratio times the
    FLOPs of the best preset (a fixed anchor: the best trial so far could be a tiny model that
    would then refuse every larger one; none before a preset completed, none without presets)."""
    caps = [] if o.max_flops is None else [o.max_flops]
    presets = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if "preset" in t.user_attrs]
    best = st.best_trial(study, presets)
    if o.max_flops_ratio is not None and best is not None and best.user_attrs.get("flops"):
        caps.append(o.max_flops_ratio * best.user_attrs["flops"])
    return min(caps) if caps else None


def job_sampler(study: optuna.Study, space, o: RunOptions, image_size: int, artifacts: str):
    """`sample(trial) -> TrainJob`: the configs, how they were drawn, their cost (refused over the cap)."""
    from agesearch.search.loop.trackers import tensorboard_dir

    def sample(trial: optuna.Trial) -> TrainJob:
        model_cfg, train_cfg = sample_configs(trial, space, image_size, o.epochs, seed=trial_seed(study.user_attrs[st.META_KEY]["seed"] if o.sampler_seed is None else o.sampler_seed, trial.number))
        fixed = "preset" in trial.user_attrs or "retry_of" in trial.user_attrs  # enqueued, not drawn
        if hasattr(study.sampler, "decision"):
            trial.set_user_attr("sampled_by", study.sampler.decision(trial.number, fixed))
        # A preset or a retry is never refused: the baselines are what the cap is measured from.
        # A perturbation was planned under the cap (sampling.IncumbentPerturbation draws again
        # over it), so only a draw of the inner sampler is refused here.
        check_cost(trial, model_cfg, None if fixed else cost_cap(study, o))
        board = None if o.tensorboard is None else tensorboard_dir(o.tensorboard, trial.number)
        return TrainJob(model_cfg, train_cfg, o.multi, artifacts, tensorboard=board)

    return sample


def _execute(study: optuna.Study, sample, train_data, o: RunOptions, cache_dir: Path | None, *, callbacks: list) -> None:
    """Run the one loop here, or on Ray, under the live progress line."""
    with EpochProgress(o.epochs, live=o.live) as progress:
        hooks = dict(callbacks=[*callbacks, lambda s, t: progress.done(t.number)], on_start=progress.start, on_epoch=progress.epoch)
        if o.on_ray:
            from agesearch.search.loop.ray_executor import run_on_ray

            run_on_ray(study, sample, train_data, o, cache_dir=cache_dir, **hooks)
        else:
            executor = InProcessExecutor(train_job, train_data)
            TrialLoop(study, executor, sample, n_trials=o.n_trials, timeout=o.timeout, max_retries=o.max_retries,
                      report_epochs=not o.multi, say=print, **hooks).run()
