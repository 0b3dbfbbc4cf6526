"""`agesearch export --ensemble K`: one model averaging at most K members, chosen on val.

The members are chosen by greedy ensemble selection on the val split (`selection.py`; Caruana
et al. 2004, as AutoGluon does): start from the candidate whose stored model has the best val
objective, then add, with replacement, the candidate that makes the averaged prediction's val
objective lowest, only while that improves it, at most K picks. So a member that would make the
average worse stays out, and the ensemble is never worse on val than its best member. The
candidates are the best few COMPLETE trials by the study's ranking (`store.study.ranked`) with a
stored model, distinct by configuration: two trials with the same `model_config` and
`train_config` (a retry, a preset sampled again, another seed) count once, the better one kept.

By default each member is the model its trial stored in the study's artifact store
(store/artifacts.py), so nothing is retrained, and a candidate picked twice is one member of
weight 2. `--refit-on-train-val` retrains each pick on train+val through export's one training
path (`export.retrain`); a candidate picked twice is then two members, one more seed each. The
selection itself always scores the stored models (trained on train only): a model retrained on
val cannot be judged on it. `models/ensemble.py` joins the members into one inference model
(with `--tta flip`, over each image and its mirror too), so the `.keras` file loads, evaluates
and predicts like a single model.

The card lists the members with why each got in (the val objective of the average before and
after its pick) and their own test metrics, and sets the best single model (the first pick, no
TTA) beside the ensemble on the test split.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from agesearch.search.errors import UsageError
from agesearch.search.store.artifacts import stored_model  # noqa: F401  (a module name here, so tests can replace it)


@dataclass(frozen=True)
class Selection:
    """The greedy selection on val that chose an ensemble (one object, shared by its members)."""

    k: int  # most picks (--ensemble K)
    candidates: tuple[tuple[int, float], ...]  # (trial, its stored model's val objective alone), by the study's ranking
    picks: tuple[int, ...]  # the trial of each pick, in order
    val_objective: float  # of the final average
    stopped: str  # why it ended

    def to_dict(self) -> dict:
        return {
            "method": "greedy ensemble selection on val, with replacement (Caruana et al. 2004): a pick only if it lowers the val objective of the average",
            "k": self.k,
            "candidates": [{"trial": n, "val_objective": v} for n, v in self.candidates],
            "picks": list(self.picks),
            "best_single_val_objective": min(v for _, v in self.candidates),
            "val_objective": self.val_objective,
            "stopped": self.stopped,
        }


@dataclass(frozen=True)
class Member:
    """One model of an ensemble: a trial, its stored model, and why the selection took it."""

    trial: object  # optuna FrozenTrial
    ref: object | None = None  # store.artifacts.ModelRef (what the selection scored on val)
    weight: int = 1  # times it counts in the mean: stored models picked twice are one member of weight 2
    seed_offset: int = 0  # --refit-on-train-val: the n-th pick of one trial retrains with seed + n
    picks: tuple = ()  # ((step number from 1, selection.Step), ...) that brought it in
    selection: Selection | None = None

    @property
    def tag(self) -> str:
        """`trial N`, with its weight or seed offset when it has one."""
        return f"trial {self.trial.number}" + (f" x{self.weight}" if self.weight > 1 else "") + (f" (seed +{self.seed_offset})" if self.seed_offset else "")

    @property
    def why(self) -> str:
        """Why it is in: each of its picks, as the card and the terminal say it."""
        return "; ".join(f"step {n}: {step.why}" for n, step in self.picks) or "picked by hand"


def config_key(trial) -> str:
    """What makes two trials the same configuration: both configs when the trial recorded them
    (less the train seed: two seeds of one configuration are one configuration), else its
    sampled parameters."""
    ua = trial.user_attrs
    if "model_config" in ua and "train_config" in ua:
        train = ua["train_config"]
        if isinstance(train, dict):
            train = {k: v for k, v in train.items() if k != "seed"}
        what = {"model_config": ua["model_config"], "train_config": train}
    else:
        what = {"params": trial.params}
    return json.dumps(what, sort_keys=True, default=str)


def distinct_ranked(study, trials: list | None = None) -> list:
    """`trials` (default: the study's COMPLETE ones) by `ranked` (the one rule for the best
    trial), best first, one per configuration (the better)."""
    from agesearch.search.store.study import ranked

    seen: set[str] = set()
    out = []
    for t in ranked(study, trials):
        key = config_key(t)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def pool_size(k: int) -> int:
    """How many candidates the selection scores for `--ensemble k`.

    Each candidate's stored model predicts the whole val split, so the pool is capped at the best
    max(2k, 10) distinct trials by the study's ranking, which bounds that time; a trial further
    down seldom improves the average of better ones.
    """
    return max(2 * k, 10)


def candidate_pool(study, storage_url: str, k: int, *, refit: bool, spec: str | None = None) -> list[Member]:
    """The candidates of `--ensemble k`, best first: distinct COMPLETE trials with a stored model
    (and, with `refit`, the configs to retrain them), at most `pool_size(k)`.

    Reads the study and the artifact store only (no Keras), so a study without any fails at once.

    Raises:
        UsageError: no such trial.
    """
    from optuna.trial import TrialState

    from agesearch.search.store.artifacts import study_store

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if refit:
        complete = [t for t in complete if "model_config" in t.user_attrs and "train_config" in t.user_attrs]
    # Even a refit ensemble needs the stored models: the selection scores them on val.
    store = study_store(study, storage_url, spec)
    usable = {t.number: ref for t in complete if (ref := stored_model(t, store)) is not None}
    trials = distinct_ranked(study, [t for t in complete if t.number in usable])
    if not trials:
        what = "with a stored model" + (" (to score on val) and model_config and train_config (to retrain)" if refit else "")
        raise UsageError(f"--ensemble {k}: study {study.study_name!r} has no COMPLETE trial {what}")
    return [Member(t, usable[t.number]) for t in trials[: pool_size(k)]]


def select_members(study, storage_url: str, candidates: list[Member], k: int, *, refit: bool, cache_dir: Path | None = None, spec: str | None = None) -> list[Member]:
    """Greedy ensemble selection (`selection.greedy_select`) of at most `k` picks from `candidates`,
    each scored by its stored model on the study's val split (the searched image size, no TTA).

    Returns:
        The members in the order of their first pick: stored models picked n times are one
        member of weight n; with `refit`, n members of seed offsets 0..n-1.

    Raises:
        UsageError: the study has no val split.
    """
    from agesearch.search.frameworks import import_keras_quietly

    import_keras_quietly()  # the first Keras import here, with the CLI's filter on its start-up lines
    from agesearch.models.inference import load_model
    from agesearch.search.data.images import default_cache_dir
    from agesearch.search.data.study_data import study_dataset
    from agesearch.search.export.selection import average_objective, greedy_select
    from agesearch.search.store.artifacts import download_model, study_store
    from agesearch.search.store.study import META_KEY
    from agesearch.search.training.metrics import Baselines, predict_age_gender

    meta = study.user_attrs[META_KEY]
    ds, split = study_dataset(meta, cache_dir=cache_dir)
    val = split.val
    if len(val) == 0:
        raise UsageError(f"--ensemble {k}: study {study.study_name!r} has no val split: nothing to choose the members on")
    age_true, gender_true = ds.ages[val], ds.genders[val]
    b = meta.get("baselines")
    baselines = Baselines(**b) if b else Baselines.fit(ds.ages[split.train], ds.genders[split.train], age_true, gender_true)
    store = study_store(study, storage_url, spec)  # where candidate_pool found the refs
    dest = (Path(cache_dir) if cache_dir else default_cache_dir()) / "models"
    print(f"export: study {study.study_name}: scoring {len(candidates)} candidate(s) on val for the greedy selection "
          f"({', '.join(member_label(c.trial) for c in candidates)})", flush=True)
    _quiet_retracing()
    preds = [predict_age_gender(load_model(download_model(store, c.ref, dest).path), ds.images[val]) for c in candidates]
    steps = greedy_select(preds, age_true, gender_true, baselines, k)
    selection = Selection(
        k=k,
        candidates=tuple((c.trial.number, average_objective(a, p, age_true, gender_true, baselines)) for c, (a, p) in zip(candidates, preds)),
        picks=tuple(candidates[s.candidate].trial.number for s in steps),
        val_objective=steps[-1].after,
        stopped=f"reached K={k} picks" if len(steps) == k else "no candidate lowered the val objective of the average further",
    )
    return members_from_steps(candidates, steps, refit=refit, selection=selection)


def members_from_steps(candidates: list[Member], steps: list, *, refit: bool, selection: Selection | None = None) -> list[Member]:
    """The members the selection's `steps` make, in the order of their first pick: a candidate
    picked n times is one member of weight n, or with `refit` n members of seed offsets 0..n-1
    (n retrainings: one more model each, not one model counted twice)."""
    numbered = list(enumerate(steps, start=1))
    if refit:
        copies: Counter[int] = Counter()
        members = []
        for n, step in numbered:
            members.append(replace(candidates[step.candidate], seed_offset=copies[step.candidate], picks=((n, step),), selection=selection))
            copies[step.candidate] += 1
        return members
    order = list(dict.fromkeys(step.candidate for step in steps))
    return [
        replace(candidates[c], weight=sum(1 for _, s in numbered if s.candidate == c), picks=tuple((n, s) for n, s in numbered if s.candidate == c), selection=selection)
        for c in order
    ]


def pick_members(study, storage_url: str, k: int, *, refit: bool, spec: str | None = None, cache_dir: Path | None = None) -> list[Member]:
    """At most `k` picks from the study's candidates by greedy ensemble selection on val.

    `candidate_pool` first, before Keras, so a study with no candidate fails at once; then
    `select_members` (Keras, the study's val images, the candidates' stored models).

    Raises:
        UsageError: no candidate, or no val split.
    """
    candidates = candidate_pool(study, storage_url, k, refit=refit, spec=spec)
    return select_members(study, storage_url, candidates, k, refit=refit, cache_dir=cache_dir, spec=spec)


def member_label(trial) -> str:
    preset = trial.user_attrs.get("preset")
    return f"trial {trial.number}" + (f" (preset {preset})" if preset else "")


def export_ensemble(
    study,
    storage_url: str,
    members: list[Member],
    out: Path,
    *,
    tta_flip: bool = False,
    refit_on_train_val: bool = False,
    epochs: int | None = None,
    seed: int | None = None,
    cache_dir: Path | None = None,
    spec: str | None = None,
    image_size: int | None = None,
    format: str = "keras",
) -> dict:
    """Join `members` into one inference model, save it with its cards, return the JSON card.

    Args:
        study: the Optuna study (its "agesearch" user attr says which data and split).
        storage_url: its storage (the artifact store's default place).
        members: from `pick_members`, in the order of their first pick (the first is the best
            single candidate); each counts `weight` times in the mean.
        out: the .keras file to write; the card goes to the same path with `.json`.
        tta_flip: average each member over the image and its horizontal mirror too.
        refit_on_train_val: retrain each member on train+val (`export.retrain`) instead of
            loading its stored model.
        epochs: with `refit_on_train_val`, exactly this many epochs (default: each trial's
            best_epoch + 1).
        seed: Keras' global seed of each member's retraining; None: its trial's own (member i is
            then the model `export --trial N --refit-on-train-val` would give).
        cache_dir: decoded-image cache; stored models are downloaded under its `models/`.
        spec: the artifact store `pick_members` was given (default: the study's).
        image_size: with `refit_on_train_val`, retrain every member at this many pixels; UsageError
            without it (a stored model cannot change size) or for a member that does not fit.
        format: also write the ensemble as onnx, litert or saved_model beside `out`
            (formats.py); UsageError, before anything loads, if it cannot be written here.
    """
    from agesearch.models.ensemble import ensemble_model
    from agesearch.models.inference import load_model
    from agesearch.search.export import trial as ex
    from agesearch.search.export.formats import check_format

    check_format(format)
    if image_size is not None and not refit_on_train_val:
        raise UsageError(f"--image-size {image_size} retrains: with --ensemble it needs --refit-on-train-val (stored models cannot change size)")
    meta, ds, split = ex.study_data_at(study, [m.trial for m in members], image_size, cache_dir=cache_dir)
    _quiet_retracing()
    training: dict[tuple[int, int], dict] = {}  # by (trial, seed offset): a trial may be retrained twice
    with tempfile.TemporaryDirectory(prefix="agesearch-ensemble-") as tmp:
        if refit_on_train_val:
            paths = _refit_members(study, members, ds, split, Path(tmp), training, epochs=epochs, seed=seed, image_size=image_size)
        else:
            paths = _stored_members(study, storage_url, members, cache_dir=cache_dir, spec=spec)
        models = [load_model(p) for p in paths]
    member_metrics = [ex.score_on_test(m, ds, split) for m in models]
    model = ensemble_model(models, tta_flip=tta_flip, weights=[m.weight for m in members])
    metrics, groups, reload_diff, exports = ex.save_model(model, out, ds, split, format)  # as export_trial's: all or nothing
    card = _card(study, members, out, meta, split, member_metrics, metrics, reload_diff, tta_flip, refit_on_train_val, training)
    card["input"]["image_size"] = int(ds.images.shape[1])  # the model's input: the trained size, not the searched one
    return ex.write_cards(card, out, groups, exports)


def _refit_members(study, members, ds, split, tmp: Path, training: dict, *, epochs: int | None, seed: int | None,
                   image_size: int | None = None) -> list[Path]:
    """Retrain each member on train+val (at `image_size`, the size of `ds`) into `tmp`, with
    `seed` or (None) its trial's own; its training record goes to `training`."""
    from agesearch.search.export.trial import recorded_seed, retrain

    # Each member is trained, saved and dropped before the next one (fit clears Keras' state);
    # all come back from files, as stored members do.
    paths = []
    for m in members:
        # A trial picked twice by the selection is retrained twice, the second time with seed + 1.
        base = recorded_seed(m.trial) if seed is None else seed
        trained = retrain(study, m.trial, ds, split, epochs=epochs, refit_on_train_val=True, seed=(base + m.seed_offset) % 2**32, image_size=image_size)
        paths.append(tmp / f"trial-{m.trial.number}-{m.seed_offset}.keras")
        trained.model.save(paths[-1])
        training[m.trial.number, m.seed_offset] = trained.training() | {"model_config": trained.model_cfg.to_dict(), "train_config": trained.train_cfg.to_dict()}
    return paths


def _stored_members(study, storage_url: str, members, *, cache_dir: Path | None, spec: str | None) -> list[Path]:
    """The members' stored models as local files (downloaded once per artifact id)."""
    from agesearch.search.data.images import default_cache_dir
    from agesearch.search.store.artifacts import download_model, study_store

    store = study_store(study, storage_url, spec)  # where pick_members found the refs
    dest = (Path(cache_dir) if cache_dir else default_cache_dir()) / "models"
    print(f"export: study {study.study_name}: averaging the stored models of {', '.join(m.tag for m in members)}", flush=True)
    return [download_model(store, m.ref, dest).path for m in members]


def _quiet_retracing() -> None:
    # Each member predicts through its own tf.function: TensorFlow's "N out of the last N calls
    # triggered tf.function retracing" warning would follow the fifth (fit() silences it too).
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")


def _card(study, members, out, meta, split, member_metrics, metrics, reload_diff, tta_flip, refit, training) -> dict:
    """The ensemble's model card: its members, each scored alone, and the ensemble beside the best one."""
    from agesearch.search.export import trial as ex

    numbers = [m.trial.number for m in members]
    rows = []
    for m, mm in zip(members, member_metrics):
        ua = m.trial.user_attrs
        row = ex.trial_summary(m.trial) | {"model_config": ua.get("model_config"), "train_config": ua.get("train_config")}
        if refit:
            row["training"] = training[m.trial.number, m.seed_offset]
            row["seed_offset"] = m.seed_offset
        else:
            row["artifact_id"], row["artifact_file"] = m.ref.artifact_id, m.ref.filename
        row["weight"] = m.weight
        row["why"] = m.why
        row["picks"] = [{"step": n} | step.to_dict() for n, step in m.picks]
        rows.append(row | {"test_metrics": mm})
    tta = "flip" if tta_flip else None
    label = f"ensemble of {len(members)} ({', '.join(m.tag for m in members)})" + (" + flip TTA" if tta_flip else "")
    selection = members[0].selection
    source = "retrained on train+val" if refit else "stored model"
    header = ex.card_header(study, out, meta, split)
    return {
        **{k: header[k] for k in ("format", "created", "model_file", "outputs", "input")},
        "study": {"name": study.study_name, "trials": numbers, "best_trial": numbers[0]},
        "ensemble": {
            "size": len(members),
            "tta": tta,
            "members_from": "retrained on train+val (--refit-on-train-val)" if refit else "stored models (the search's weights)",
            "distinct_by": "model_config and train_config less its seed (else the sampled params); of two trials with one configuration, the better",
            "combine": "mean of the members' age (years) and P(female), a member of weight w counted w times" + (", over each image and its horizontal mirror" if tta_flip else ""),
            "selection": selection.to_dict() if selection else None,
        },
        "members": rows,
        "data": header["data"],
        "test_metrics": metrics,
        "side_by_side": ex.side_by_side(
            single=member_metrics[0], single_label=f"{member_label(members[0].trial)}, {source}", single_trial=numbers[0],
            ensemble=metrics, ensemble_label=label, ensemble_trials=numbers, tta=tta,
        ),
        "reload_check_max_abs_diff": reload_diff,
        "versions": ex._versions(),
    }


def format_members(card: dict) -> str:
    """One line per member: its trial, why the selection took it, and its own test numbers."""
    selection = card["ensemble"].get("selection")
    lines = [f"members ({card['ensemble']['members_from']})" + (", by greedy selection on val:" if selection else ":")]
    for r in card["members"]:
        m = r["test_metrics"]
        preset = f" (preset {r['preset']})" if r.get("preset") else ""
        weight = f" x{r['weight']}" if r.get("weight", 1) > 1 else ""
        seed = f" (seed +{r['seed_offset']})" if r.get("seed_offset") else ""
        scores = f"test age MAE {m['age_mae']:.2f}, gender accuracy {m['gender_accuracy']:.3f}" if m["n"] else "no test split"
        lines.append(f"  trial {r['trial']}{preset}{weight}{seed}: {r.get('why', 'n/a')}; {scores}")
    if selection:
        lines.append(f"  val objective {selection['best_single_val_objective']:.4f} (best single) -> {selection['val_objective']:.4f} "
                     f"(the average, no TTA), from {len(selection['candidates'])} candidate(s); stopped: {selection['stopped']}")
    return "\n".join(lines)
