"""One model from several: the mean of inference models' answers, optionally over flipped images too.

`ensemble_model` takes models made by `inference_model` (input `image`, outputs `age` in years
and `gender` = P(female), each (n, 1)) and gives back one model with the same input and outputs,
saved and loaded as one .keras file; a member may count more than once in the mean (`weights`).
Faces are close to mirror-symmetric, so averaging over the image and its horizontal mirror
(test-time augmentation) is a second ensemble for free.
"""

from __future__ import annotations

import keras
from keras import ops

from agesearch.models.coral import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class HorizontalFlip(keras.layers.Layer):
    """Mirror channels-last images left to right, always (RandomFlip does nothing at inference)."""

    def call(self, images):
        return ops.flip(images, axis=-2)


def _mean(tensors: list, name: str):
    # Average needs two inputs or more; one member without flips is that member's answer.
    if len(tensors) == 1:
        return keras.layers.Identity(name=name)(tensors[0])
    return keras.layers.Average(name=name)(tensors)


def ensemble_model(members: list[keras.Model], *, tta_flip: bool, weights: list[int] | None = None) -> keras.Model:
    """The mean of the members' `age` and `gender`, over the image (and its mirror with `tta_flip`).

    Args:
        members: inference models (`agesearch.models.inference_model` or loaded from their
            files), all taking the same input shape.
        tta_flip: also run every member on the horizontally flipped image and average both.
        weights: how many times each member counts in the mean (greedy ensemble selection
            picks a member again to weigh it more); default once each.

    Returns:
        A model with input `image` and outputs {"age": years, "gender": P(female)}, (n, 1) each.

    Raises:
        ValueError: no members, members with different input shapes, a member that is not an
            inference model (outputs other than `age` and `gender` of one value per image),
            members that share weights, or `weights` that are not one positive integer per member.
    """
    if not members:
        raise ValueError("Invalid value for `members`: must hold at least one inference model. Received: members=[]")
    weights = [1] * len(members) if weights is None else list(weights)
    if len(weights) != len(members) or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in weights):
        raise ValueError(f"Invalid value for `weights`: must be one positive integer per member ({len(members)}). Received: weights={weights}")
    shapes = [tuple(m.input_shape[1:]) for m in members]
    if len(set(shapes)) > 1:
        raise ValueError(f"Invalid value for `members`: every member must take the same input shape. Received: input shapes {shapes}")
    for m in members:
        # A bare two-branch model (build_model) has the same output names but logits or a
        # normalised age: one value per image is the inference model's mark.
        if sorted(m.output_names) != ["age", "gender"] or any(tuple(s[1:]) != (1,) for s in m.output_shape):
            raise ValueError(
                "Invalid value for `members`: each must be an inference model, with outputs `age` and `gender` of one value per image. "
                f"Received: outputs {dict(zip(m.output_names, m.output_shape))} of {m.name!r}"
            )
    # A model given twice (or two wrappers of one core) would be saved once and load back with
    # its second copy unset: Keras saves a shared weight only at its first place in the file.
    owner: dict[int, int] = {}
    for i, m in enumerate(members):
        for w in m.weights:
            j = owner.setdefault(id(w), i)
            if j != i:
                raise ValueError(f"Invalid value for `members`: must not share weights (the same model twice?). Received: members {j} and {i} share {w.path!r}")
    inputs = keras.Input(shapes[0], name="image")
    views = [inputs, HorizontalFlip(name="flip")(inputs)] if tta_flip else [inputs]
    ages, genders = [], []
    for i, (member, weight) in enumerate(zip(members, weights)):
        # Every inference model is named "agesearch_model" and holds the same layer names:
        # a uniquely named wrapper per member keeps them apart in this model and in its file.
        x = keras.Input(shapes[0], name="image")
        wrapped = keras.Model(x, member(x), name=f"member{i}")
        for view in views:
            out = wrapped(view)
            # A weight is the answer repeated in the mean: one forward pass, counted `weight` times.
            ages += [out["age"]] * weight
            genders += [out["gender"]] * weight
    outputs = {"age": _mean(ages, "age"), "gender": _mean(genders, "gender")}
    return keras.Model(inputs, outputs, name="agesearch_ensemble")
