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

import hashlib
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.samplers import BaseSampler, GridSampler
from optuna.trial import FrozenTrial

from agesearch.search import study as st
from agesearch.search.errors import UsageError
from agesearch.search.progress import EpochProgress, ProgressLine
from agesearch.search.trial import SearchInterrupted, exit_on_second_interrupt, interrupted_line

SAMPLERS = ("tpe", "random", "cmaes", "nsga2")
PRUNERS = ("median", "hyperband", "none")


def trial_seed(sampler_seed: int, number: int) -> int:
    """The sampler seed of trial `number`: see the module docstring."""
    return int.from_bytes(hashlib.sha256(f"{sampler_seed}:{number}".encode()).digest()[:4], "little")


class PerTrialSeedSampler(BaseSampler):
    """Delegates to a sampler made for each trial with `trial_seed(seed, trial.number)`.

    Optuna's samplers keep nothing but their random state between trials (TPE, CMA-ES,
    NSGA-II and the grid read the study's trials each time), so a fresh one per trial loses
    nothing and makes the draws depend on the trial number, not on how many processes run.
    """

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int):
        self.factory = factory
        self.seed = seed
        self._current: tuple[int, BaseSampler] = (-1, factory(seed))

    def for_trial(self, number: int) -> BaseSampler:
        if self._current[0] != number:
            self._current = (number, self.factory(trial_seed(self.seed, number)))
        return self._current[1]

    def is_exhausted(self, study: optuna.Study) -> bool:
        """A grid sampler whose grid has been walked: nothing new to run."""
        inner = self._current[1]
        return isinstance(inner, GridSampler) and inner.is_exhausted(study)

    def before_trial(self, study, trial: FrozenTrial) -> None:
        self.for_trial(trial.number).before_trial(study, trial)

    def infer_relative_search_space(self, study, trial: FrozenTrial):
        return self.for_trial(trial.number).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial: FrozenTrial, search_space):
        return self.for_trial(trial.number).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial: FrozenTrial, param_name, param_distribution):
        return self.for_trial(trial.number).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial: FrozenTrial, state, values) -> None:
        inner = self.for_trial(trial.number)
        if isinstance(inner, GridSampler):
            return  # its after_trial only calls study.stop(), which ask/tell has no loop for
        inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._current[1].reseed_rng()


def make_sampler(name: str, sampler_seed: int, *, multi: bool, grid: dict | None = None) -> PerTrialSeedSampler:
    """The Optuna sampler `name` (a grid space walks its `grid` instead), seeded per trial."""
    if name == "cmaes" and multi:
        raise UsageError("--sampler cmaes is single-objective; use nsga2, tpe or random with --objective multi")
    samplers = optuna.samplers

    def factory(seed: int) -> BaseSampler:
        if grid is not None:
            return samplers.GridSampler(grid, seed=seed)
        if name == "tpe":
            return samplers.TPESampler(seed=seed)
        if name == "random":
            return samplers.RandomSampler(seed=seed)
        if name == "cmaes":  # float and int parameters; categorical ones fall back to random
            return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        return samplers.NSGAIISampler(seed=seed)

    return PerTrialSeedSampler(factory, sampler_seed)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """The pruner, its budgets tied to --epochs.

    Median: nothing is pruned in the first third of the epochs. At 30 epochs a warm-up of 1 cut
    18 of 32 trials at epochs 1-4, before slow starters (no BatchNorm, small learning rates)
    showed anything, while the best trials were still improving at epochs 28-30 (issue 11's
    study; benchmarks/RESULTS.md, "Training choices"). Five complete trials come first (the
    baseline presets, when the space holds them). Hyperband: brackets from a tenth of the
    epochs to all of them, a third kept at each rung.
    """
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 3))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, epochs // 10), max_resource=epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


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


def load_data(spec: DataSpec):
    """Load and split the data; prints one progress line. Returns (dataset, split, TrainingData)."""
    from agesearch.search.duplicates import split_faces
    from agesearch.search.data import load_faces
    from agesearch.search.study_data import data_folder
    from agesearch.search.training import TrainingData  # imports Keras

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


def _space(name: str, backbone_weights: str):
    from agesearch.spaces import get_space, with_backbone_weights

    try:
        space = get_space(name)
    except KeyError as e:
        raise UsageError(e.args[0]) from None
    if backbone_weights not in ("imagenet", "none") and not Path(backbone_weights).is_file():
        raise UsageError(f"--backbone-weights: no such weights file {backbone_weights!r} (or use imagenet or none)")
    return with_backbone_weights(space, backbone_weights)


def _baseline_trials(space_name: str, image_size: int, baselines: list[str] | None | Literal[False]) -> list[tuple[str, dict]]:
    import agesearch.spaces

    if baselines is False:
        return []
    try:
        return agesearch.spaces.baseline_trials(space_name, image_size, baselines)
    except KeyError as e:
        raise UsageError(f"--baselines: {e.args[0]}") from None


def run_search(
    space: str,
    *,
    data: DataSpec = DataSpec(),
    study_name: str | None = None,
    storage: str | None = None,
    n_trials: int = 20,
    timeout: float | None = None,
    epochs: int = 30,
    sampler: str | None = None,
    pruner: str | None = None,
    objective: Literal["combined", "multi"] = "combined",
    sampler_seed: int | None = None,
    backbone_weights: str = "imagenet",
    baselines: list[str] | None | Literal[False] = None,
    workers: int = 1,
    gpus_per_trial: float | None = None,
    cpus_per_trial: float = 1.0,
    address: str | None = None,
    max_retries: int = 1,
    live: bool | None = None,
    artifacts: str | None = None,
    keep_models: int | None = None,
) -> optuna.Study:
    """Run or resume a search until the study holds `n_trials` finished trials; see the module
    docstring for seeds, several processes and Ctrl-C. (Long only for its documented arguments:
    the body is a few named steps.)

    Args:
        space: name of a registered search space.
        data: images, size, split and data seed.
        study_name: default: the space's name. storage: default sqlite:///studies/<study>.db.
        n_trials: the study's total of finished trials. timeout: seconds after which no trial starts.
        epochs: most epochs per trial. sampler / pruner: Optuna's, by name (defaults depend on
            `objective`). objective: "combined" (one value) or "multi" (MAE down, accuracy up).
        sampler_seed: base of the per-trial sampler seeds (default: `data.seed`).
        backbone_weights: "imagenet", "none" or a weights file, for spaces with backbones.
        baselines: presets enqueued as the first trials of a new study: None all that fit the
            space, a list those names, False none.
        workers, gpus_per_trial, cpus_per_trial, address, max_retries: Ray (workers > 1 or address).
        live: live epoch line (default: when stdout is a terminal).
        artifacts: where each complete trial's model is uploaded (an Optuna artifact store): a
            folder or s3://BUCKET/PREFIX; default studies/<study>-artifacts/ beside the database.
        keep_models: keep only the best this many models in the store (default: all).

    Raises:
        UsageError, DataError, StorageError, StudyMismatch, DistributedError: bad input, one line.
        SearchInterrupted: Ctrl-C; the running trials are enqueued again.
    """
    fn = _space(space, backbone_weights)
    multi = objective == "multi"
    sampler_obj, pruner_obj, names = _sampler_and_pruner(space, sampler, pruner, multi=multi, seed=data.seed if sampler_seed is None else sampler_seed,
                                                         image_size=data.image_size, epochs=epochs)
    study_name = study_name or space
    url = storage or st.default_storage(study_name)
    st.check_storage_url(url)
    presets = _baseline_trials(space, data.image_size, baselines)
    from agesearch.search.artifacts import STORE_ATTR, KeepBestModels, record_store, resolve_spec, store_for

    spec = resolve_spec(artifacts, url, study_name)
    store_for(spec)  # a missing boto3 fails here, before the data loads

    ds, split, train_data = load_data(data)
    meta = study_meta(data, space, objective, ds, split, train_data.baselines)
    rdb = st.open_storage(url)
    study = st.create_or_resume(study_name, rdb, directions=["minimize", "maximize"] if multi else ["minimize"], meta=meta,
                                sampler=sampler_obj, pruner=pruner_obj)
    enqueued = st.enqueue_baselines(study, presets)
    done = st.finished_count(study)
    b = train_data.baselines
    print(
        f"study {study_name} in {url}: {done} finished, {max(n_trials - done, 0)} to run "
        f"(space {space}, {names}, {epochs} epochs, "
        f"trivial val age MAE {b.mae_trivial:.2f} y, gender error {b.error_trivial:.3f})"
        + (f"; {enqueued} presets enqueued first" if enqueued else ""),
        flush=True,
    )
    if n_trials > done:
        if artifacts is None:  # a resume keeps the store the study was started with
            spec = study.user_attrs.get(STORE_ATTR, spec)
        record_store(study, spec)
        task = SearchTask(fn, train_data, image_size=data.image_size, epochs=epochs, multi=multi, artifacts=spec)
        callbacks = [KeepBestModels(store_for(spec), keep_models), ProgressLine(multi)]
        ray_options = dict(workers=workers, gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial, address=address,
                           max_retries=max_retries, cache_dir=data.cache_dir) if workers > 1 or address else None
        _execute(study, task, rdb, n_trials=n_trials, timeout=timeout, callbacks=callbacks, live=live, ray_options=ray_options)
    from agesearch.search.summary import summarize

    print(summarize(study), flush=True)
    return study


def _sampler_and_pruner(space: str, sampler: str | None, pruner: str | None, *, multi: bool, seed: int, image_size: int, epochs: int):
    """(sampler, pruner, "sampler NAME, pruner NAME"); a grid space walks its grid."""
    if multi and pruner not in (None, "none"):
        raise UsageError(f"--pruner {pruner} cannot be used with --objective multi: Optuna's pruners are single-objective only")
    sampler_name = sampler or ("nsga2" if multi else "tpe")
    from agesearch.spaces import space_grid

    grid_of = space_grid(space)
    grid = grid_of(image_size) if grid_of is not None else None
    pruner_name = pruner or ("none" if multi else "median")
    sampler_obj = make_sampler(sampler_name, seed, multi=multi, grid=grid)
    return sampler_obj, make_pruner(pruner_name, epochs), f"sampler {'grid' if grid is not None else sampler_name}, pruner {pruner_name}"


def _execute(study, task: SearchTask, storage, *, n_trials: int, timeout: float | None, callbacks: list, live: bool | None,
             ray_options: dict | None) -> None:
    """Run the trials here, or on Ray with `ray_options`, under the live progress line."""
    with EpochProgress(task.epochs, live=live) as progress:
        if ray_options is not None:
            from agesearch.search.distributed import run_distributed

            run_distributed(study, task, n_trials=n_trials, timeout=timeout, callbacks=[*callbacks, lambda s, t: progress.done(t.number)],
                            on_epoch=progress.epoch, **ray_options)
        else:
            run_in_process(study, task, storage, n_trials=n_trials, timeout=timeout, callbacks=callbacks, progress=progress)


@dataclass(frozen=True)
class SearchTask:
    """What every trial of one search shares: the space, the data and the training settings."""

    space: Any  # trial, image_size -> (ModelConfig, TrainConfig)
    data: Any  # TrainingData
    image_size: int
    epochs: int
    multi: bool
    models_dir: Path | None = None
    artifacts: str | None = None  # artifact store spec (artifacts.resolve_spec): where models go


def _heartbeat(storage, trial: optuna.Trial):
    """Optuna's heartbeat thread for one asked trial, as `study.optimize` runs it, so that
    another process fails and retries the trial if this one dies. The thread helper is
    Optuna's own (no public name for it), fed the trial's storage id."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial._trial_id, storage)  # noqa: SLF001


def _next_slot(study: optuna.Study, n_trials: int, deadline: float | None) -> bool:
    """Wait until a trial may start (True) or the study is done or out of time (False).

    Trials running in other processes hold their places; while they could still bring the
    study to `n_trials`, wait for them, failing (and retrying) those whose heartbeat stopped.
    """
    while deadline is None or time.monotonic() < deadline:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        finished = st.finished_count(study)
        if finished >= n_trials or study.sampler.is_exhausted(study):
            return False
        if st.active_count(study) < n_trials:
            return True
        time.sleep(2.0)
    return False


def run_in_process(study: optuna.Study, task: SearchTask, storage, *, n_trials: int, timeout: float | None = None,
                   callbacks: Sequence[Callable] = (), progress: EpochProgress | None = None) -> None:
    """Ask, train and tell trials one at a time here until the study holds `n_trials`."""
    import gc

    from agesearch.search.trial import fail_trial, run_trial

    deadline = None if timeout is None else time.monotonic() + timeout
    while _next_slot(study, n_trials, deadline):
        with warnings.catch_warnings():
            # Optuna warns that heartbeats are meant for `optimize`: this loop runs them itself.
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = st.with_retries(lambda a: study.ask(), "ask")
        if progress is not None:
            progress.start(trial.number)
        try:
            with _heartbeat(storage, trial):
                frozen = run_trial(study, trial, task.space, task.data, image_size=task.image_size, epochs=task.epochs,
                                   multi=task.multi, models_dir=task.models_dir, artifacts=task.artifacts, on_epoch=progress.epoch if progress else None)
        except KeyboardInterrupt:
            with exit_on_second_interrupt():
                fail_trial(study, trial, "interrupted (Ctrl-C)", max_retries=None)
            raise SearchInterrupted(interrupted_line([trial.number])) from None
        if progress is not None:
            progress.done(trial.number)
        for callback in callbacks:
            callback(study, frozen)
        gc.collect()  # TF keeps a finished model's graph alive until the next collection
