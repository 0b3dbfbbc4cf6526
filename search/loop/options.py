"""The options of one search, checked once: `RunOptions`, and the sampler and pruner tables.

The CLI builds a RunOptions from its arguments and calls `check()` before any framework loads;
`run_search` calls the same `check()` when called from Python, and both executors read their
settings from it. A new run option is one field here (and one argparse line in cli.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from agesearch.search.errors import UsageError

if TYPE_CHECKING:  # the CLI reads these tables for its help: Optuna loads only when a pruner is made
    import optuna


@dataclass(frozen=True)
class SamplerChoice:
    """One `--sampler` value: its help text and whether it handles two objectives."""

    help: str
    multi: bool  # usable with --objective multi


@dataclass(frozen=True)
class PrunerChoice:
    """One `--pruner` value: its help text and its factory `(epochs, n_baselines) -> pruner`."""

    help: str
    make: Callable[[int, int], optuna.pruners.BasePruner]


# The samplers by name. The factories are in loop/sampling.py (they need the study's baselines
# and the per-trial seeds); this table is what the CLI's choices and help read.
SAMPLERS: dict[str, SamplerChoice] = {
    "tpe": SamplerChoice("multivariate grouped TPE; its start-up is the baseline presets, then 7 in 10 trials perturb the best trial (its training recipe most often)", True),
    "tpe-plain": SamplerChoice("Optuna's default TPE (10 random start-up trials, independent parameters): the old default, for A/B runs", True),
    "random": SamplerChoice("random search", True),
    "cmaes": SamplerChoice("CMA-ES (float and int parameters; categorical ones random)", False),
    "nsga2": SamplerChoice("NSGA-II (the default for --objective multi)", True),
}


def _median(epochs: int, n_baselines: int) -> optuna.pruners.BasePruner:
    from agesearch.search.loop.pruning import MarginMedianPruner

    # Presets are never pruned (their `preset` attr: loop/trial.py report_epoch); a searched
    # trial is compared with the median of the finished ones from its second epoch on, and
    # pruned only when worse by more than the seed noise (loop/pruning.py, RESULTS.md).
    return MarginMedianPruner(n_startup_trials=max(n_baselines, 3), n_warmup_steps=1)


def _median_strict(epochs: int, n_baselines: int) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=max(n_baselines, 3), n_warmup_steps=1)


def _median_late(epochs: int, n_baselines: int) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 3))


def _hyperband(epochs: int, n_baselines: int) -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.HyperbandPruner(min_resource=max(1, epochs // 10), max_resource=epochs, reduction_factor=3)


PRUNERS: dict[str, PrunerChoice] = {
    "median": PrunerChoice("from the second epoch, a trial worse by more than 40 percent than the median of the finished trials at that epoch "
                           "(a margin for seed noise); presets are never pruned", _median),
    "median-strict": PrunerChoice("Optuna's MedianPruner from the second epoch (no margin: the default before the margin, for A/B runs)", _median_strict),
    "median-late": PrunerChoice("median pruner after a third of the epochs (the old default)", _median_late),
    "hyperband": PrunerChoice("Hyperband, rungs from a tenth of the epochs to all, a third kept at each", _hyperband),
    "none": PrunerChoice("no pruning", lambda epochs, n: __import__("optuna").pruners.NopPruner()),
}


@dataclass(frozen=True)
class RunOptions:
    """How one search runs (everything but the data, which is a DataSpec)."""

    space: str  # a registered search space
    study_name: str | None = None  # default: the space's name
    storage: str | None = None  # default: sqlite:///studies/<study>.db
    n_trials: int = 20  # the study's total of finished trials, across processes
    timeout: float | None = None  # seconds after which no trial starts
    epochs: int = 30  # most epochs per trial
    sampler: str | None = None  # a SAMPLERS name; default tpe (nsga2 for objective multi)
    pruner: str | None = None  # a PRUNERS name; default median (none for objective multi)
    objective: Literal["combined", "multi"] = "combined"
    sampler_seed: int | None = None  # base of the per-trial sampler seeds; default: the data seed
    backbone_weights: str = "imagenet"  # imagenet | none | a weights file
    baselines: list[str] | None | Literal[False] = None  # None: every preset of the space; False: none
    max_flops: float | None = None  # refuse draws over this many FLOPs per image
    max_flops_ratio: float | None = 4.0  # refuse draws over this many times the best preset's FLOPs
    workers: int = 1  # trials at once; > 1 (or an address) runs them on Ray
    gpus_per_trial: float | None = None  # Ray; default 1 if the cluster has GPUs
    cpus_per_trial: float = 1.0  # Ray
    address: str | None = None  # a Ray cluster to join
    max_retries: int = 1  # reruns of a trial whose process died
    live: bool | None = None  # the live epoch line; default: when stdout is a terminal
    artifacts: str | None = None  # where trial models go: a folder or s3://BUCKET/PREFIX
    keep_models: int | None = None  # keep only the best K models in the store
    mlflow: str | None = None  # MLflow tracking URI: each finished trial becomes a run of the experiment named as the study
    tensorboard: str | None = None  # folder of Keras' TensorBoard logs, one sub-folder trial-N per trial

    @property
    def multi(self) -> bool:
        return self.objective == "multi"

    @property
    def study(self) -> str:
        return self.study_name or self.space

    @property
    def sampler_name(self) -> str:
        return self.sampler or ("nsga2" if self.multi else "tpe")

    @property
    def pruner_name(self) -> str:
        return self.pruner or ("none" if self.multi else "median")

    @property
    def on_ray(self) -> bool:
        return self.workers > 1 or self.address is not None

    def replace(self, **changes) -> RunOptions:
        return dataclasses.replace(self, **changes)

    def check(self, image_size: int) -> RunOptions:
        """Every rule that needs no framework and no data; raises UsageError with one line."""
        from agesearch.search.store import study as st
        from agesearch.spaces import baseline_trials, get_space

        try:
            get_space(self.space)
        except KeyError as e:
            raise UsageError(e.args[0]) from None
        if self.objective not in ("combined", "multi"):
            raise UsageError(f"--objective must be combined or multi, got {self.objective!r}")
        if self.sampler_name not in SAMPLERS:
            raise UsageError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler_name!r}")
        if self.pruner_name not in PRUNERS:
            raise UsageError(f"--pruner must be one of {', '.join(PRUNERS)}, got {self.pruner_name!r}")
        if self.multi and self.pruner_name != "none":
            raise UsageError(f"--pruner {self.pruner_name} cannot be used with --objective multi: Optuna's pruners are single-objective only")
        if self.multi and not SAMPLERS[self.sampler_name].multi:
            raise UsageError(f"--sampler {self.sampler_name} is single-objective; use nsga2, tpe or random with --objective multi")
        if self.backbone_weights not in ("imagenet", "none") and not Path(self.backbone_weights).is_file():
            raise UsageError(f"--backbone-weights: no such weights file {self.backbone_weights!r} (or use imagenet or none)")
        for name, value in (("--n-trials", self.n_trials), ("--epochs", self.epochs), ("--workers", self.workers)):
            if value < 1:
                raise UsageError(f"{name} must be a positive integer, got {value}")
        for name, value in (("--max-flops", self.max_flops), ("--max-flops-ratio", self.max_flops_ratio)):
            if value is not None and not value > 0:
                raise UsageError(f"{name} must be a positive number, got {value}")
        st.check_storage_url(self.storage or st.default_storage(self.study))
        if self.artifacts is not None:
            from agesearch.search.store.artifacts import check_spec

            check_spec(self.artifacts)
        from agesearch.search.loop.trackers import check_mlflow_installed, check_tensorboard  # light: no framework

        if self.mlflow is not None:
            check_mlflow_installed()  # reaching the tracking store is run_search's, before the data loads
        if self.tensorboard is not None:
            check_tensorboard(self.tensorboard)
        if self.baselines:
            try:
                baseline_trials(self.space, image_size, self.baselines)
            except (KeyError, ValueError) as e:
                raise UsageError(f"--baselines: {e.args[0]}") from None
        return self
