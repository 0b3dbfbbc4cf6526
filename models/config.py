"""The configurations: every knob of the two-branch CNN (ModelConfig) and of its training
(TrainConfig), frozen and validated, with no Keras import."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

BLOCK_ORDERS = ("conv_bn_relu", "conv_relu_bn", "conv_relu")
POOLINGS = ("max", "avg")
HEADS = ("flatten", "gap")
AGE_ACTIVATIONS = ("linear", "relu")
FILTER_ORDERS = ("increasing", "decreasing", "constant")
AGE_HEADS = ("regression", "coral", "dldl")
AGE_OUTPUTS = ("normalised", "years")
# Keras applications usable as the shared trunk, with the smallest input side each accepts.
BACKBONE_MIN_SIZE = {"resnet50": 32, "mobilenetv3small": 32, "efficientnetb0": 32, "inceptionv3": 75}
BACKBONES = ("none", *BACKBONE_MIN_SIZE)


def _invalid(name: str, rule: str, value: object) -> ValueError:
    return ValueError(f"Invalid value for `{name}`: {rule}. Received: {name}={value!r}")


def filter_schedule(base: int, order: str, depth: int, *, cap: int = 256) -> tuple[int, ...]:
    """Filters of `depth` stacked conv blocks, from the input down.

    Args:
        base: filters of the first block.
        order: "increasing" (x2 per block, at most `cap`), "decreasing" (/2 per block,
            at least 8) or "constant".
        depth: number of blocks.
    """
    if order not in FILTER_ORDERS:
        raise _invalid("filter_order", f"must be one of {FILTER_ORDERS}", order)
    if order == "increasing":
        return tuple(min(cap, base * 2**i) for i in range(depth))
    if order == "decreasing":
        return tuple(max(8, base // 2**i) for i in range(depth))
    return (base,) * depth


def max_depth(image_size: int) -> int:
    """The most 2x2 poolings an image of `image_size` pixels survives (>= 1 px left)."""
    return int(math.floor(math.log2(image_size)))


@dataclass(frozen=True)
class ModelConfig:
    """A two-branch CNN: `shared_blocks` conv blocks, then an age and a gender branch.

    Block k (counted from the input, shared blocks first) has `filters[k]` filters, so
    both branches continue the same filter schedule after the split.
    """

    image_size: int = 128  # side of the square RGB input, pixels
    shared_blocks: int = 0  # conv blocks shared before the split; 0 = independent branches
    age_blocks: int = 4  # conv blocks in the age branch after the split
    gender_blocks: int = 4  # conv blocks in the gender branch after the split
    filters: tuple[int, ...] = (32, 64, 128, 256)  # filters per block depth, len = shared + max(branch)
    gender_filters: tuple[int, ...] = ()  # filters of the gender branch's blocks; () = continue `filters` (filled in)
    shared_convs: int = 1  # convs in each shared block, 1 or 2 (two: the first has half the filters)
    kernel_size: int = 3  # conv kernel side
    block_order: str = "conv_bn_relu"  # conv_bn_relu | conv_relu_bn | conv_relu (no BatchNorm)
    pooling: str = "max"  # 2x2 pooling after each block: max | avg
    block_dropout: float = 0.0  # dropout after each block's pooling
    head: str = "flatten"  # how a branch's feature map becomes a vector: flatten | gap
    dense_dropout: float = 0.5  # dropout before each branch's dense layer
    age_dense: int = 128  # width of the age branch's dense layer
    gender_dense: int = 128  # width of the gender branch's dense layer
    l2: float = 0.0  # L2 weight decay on the conv and dense kernels of the shared part and the age branch
    gender_l2: float | None = None  # L2 of the gender branch's kernels; None = `l2` (filled in)
    age_activation: str = "linear"  # activation of the regression age output: linear | relu
    age_head: str = "regression"  # regression (one unit) | coral (ordinal ranks, Cao et al. 2019) | dldl (softmax over ages, Gao et al. 2018)
    age_output: str = "normalised"  # regression target: normalised (age / train mean age) | years
    coral_min_age: int = 0  # CORAL: the lowest rank (age) ...
    coral_max_age: int = 116  # ... and the highest; max - min binary rank tasks
    dldl_min_age: int = 0  # DLDL: the lowest age of the softmax ...
    dldl_max_age: int = 116  # ... and the highest; max - min + 1 classes
    dldl_sigma: float = 2.0  # DLDL: width (standard deviation, years) of the Gaussian label distribution
    backbone: str = "none"  # none (the conv blocks above) | a Keras application as the shared trunk
    backbone_weights: str = "none"  # imagenet | none | path to a weights file of that backbone

    def __post_init__(self) -> None:
        object.__setattr__(self, "filters", tuple(int(f) for f in self.filters))
        object.__setattr__(self, "gender_filters", tuple(int(f) for f in self.gender_filters))
        if not isinstance(self.image_size, int) or self.image_size < 8:
            raise _invalid("image_size", "must be an integer >= 8", self.image_size)
        if self.age_head not in AGE_HEADS:
            raise _invalid("age_head", f"must be one of {AGE_HEADS}", self.age_head)
        if not 0 <= self.coral_min_age < self.coral_max_age <= 116:
            raise _invalid("coral_max_age", f"must satisfy 0 <= coral_min_age ({self.coral_min_age}) < coral_max_age <= 116", self.coral_max_age)
        if not 0 <= self.dldl_min_age < self.dldl_max_age <= 116:
            raise _invalid("dldl_max_age", f"must satisfy 0 <= dldl_min_age ({self.dldl_min_age}) < dldl_max_age <= 116", self.dldl_max_age)
        # Ages are whole years: below 0.1 the label is one-hot already, and near 0 the KL's
        # log-space label distribution overflows to -inf (0 * inf = NaN); above 30 it is close
        # to flat over 0..116 and teaches nothing.
        if isinstance(self.dldl_sigma, bool) or not isinstance(self.dldl_sigma, (int, float)) or not 0.1 <= self.dldl_sigma <= 30:
            raise _invalid("dldl_sigma", "must be a number of years in [0.1, 30]", self.dldl_sigma)
        object.__setattr__(self, "dldl_sigma", float(self.dldl_sigma))
        if self.backbone not in BACKBONES:
            raise _invalid("backbone", f"must be one of {BACKBONES}", self.backbone)
        if self.backbone != "none":
            self._check_backbone()
        else:
            self._check_blocks()
        for name, allowed in (
            ("block_order", BLOCK_ORDERS),
            ("pooling", POOLINGS),
            ("head", HEADS),
            ("age_activation", AGE_ACTIVATIONS),
            ("age_output", AGE_OUTPUTS),
        ):
            if getattr(self, name) not in allowed:
                raise _invalid(name, f"must be one of {allowed}", getattr(self, name))
        for name in ("block_dropout", "dense_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise _invalid(name, "must be in [0, 1)", value)
        for name in ("age_dense", "gender_dense"):
            if getattr(self, name) < 1:
                raise _invalid(name, "must be >= 1", getattr(self, name))
        if self.l2 < 0:
            raise _invalid("l2", "must be >= 0", self.l2)
        if self.gender_l2 is not None and self.gender_l2 < 0:
            raise _invalid("gender_l2", "must be >= 0 or None", self.gender_l2)
        if self.gender_l2 is None:  # one spelling per model: the gender branch's own L2
            object.__setattr__(self, "gender_l2", self.l2)

    def _check_backbone(self) -> None:
        for name in ("shared_blocks", "age_blocks", "gender_blocks"):
            if getattr(self, name) != 0:
                raise _invalid(name, f"must be 0 with backbone={self.backbone!r} (the backbone is the trunk)", getattr(self, name))
        if self.filters or self.gender_filters:
            name = "filters" if self.filters else "gender_filters"
            raise _invalid(name, f"must be empty with backbone={self.backbone!r}", getattr(self, name))
        smallest = BACKBONE_MIN_SIZE[self.backbone]
        if self.image_size < smallest:
            raise _invalid("image_size", f"must be >= {smallest} for backbone={self.backbone!r}", self.image_size)

    def _check_blocks(self) -> None:
        if self.shared_blocks < 0:
            raise _invalid("shared_blocks", "must be >= 0", self.shared_blocks)
        for name in ("age_blocks", "gender_blocks"):
            value = getattr(self, name)
            if value < 0 or (self.shared_blocks == 0 and value < 1):
                raise _invalid(name, "must be >= 1 when shared_blocks=0, else >= 0", value)
        depth = self.depth
        limit = max_depth(self.image_size)
        if depth > limit:
            raise _invalid(
                "shared_blocks + max(age_blocks, gender_blocks)",
                f"each block halves the image, so at most {limit} blocks fit "
                f"image_size={self.image_size}",
                depth,
            )
        if len(self.filters) != depth:
            raise _invalid("filters", f"must have one entry per block depth ({depth})", self.filters)
        if any(f < 1 for f in self.filters):
            raise _invalid("filters", "must all be >= 1", self.filters)
        if self.gender_filters and len(self.gender_filters) != self.gender_blocks:
            raise _invalid("gender_filters", f"must be empty or have one entry per gender block ({self.gender_blocks})", self.gender_filters)
        if any(f < 1 for f in self.gender_filters):
            raise _invalid("gender_filters", "must all be >= 1", self.gender_filters)
        if not self.gender_filters and self.gender_blocks:  # one spelling per model: explicit filters
            object.__setattr__(self, "gender_filters", self.filters[self.shared_blocks : self.shared_blocks + self.gender_blocks])
        if self.shared_convs not in (1, 2):
            raise _invalid("shared_convs", "must be 1 or 2", self.shared_convs)
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise _invalid("kernel_size", "must be an odd integer >= 1", self.kernel_size)

    @property
    def age_units(self) -> int:
        """Width of the age output: 1 (regression), rank thresholds (CORAL) or ages (DLDL)."""
        if self.age_head == "coral":
            return self.coral_max_age - self.coral_min_age
        if self.age_head == "dldl":
            return self.dldl_max_age - self.dldl_min_age + 1
        return 1

    @property
    def depth(self) -> int:
        """Blocks from the input to the end of the deeper branch."""
        return self.shared_blocks + max(self.age_blocks, self.gender_blocks)

    def branch_filters(self, branch: str) -> tuple[int, ...]:
        """Filters of the blocks of `branch` ("age" or "gender") after the split."""
        if branch == "gender":
            return self.gender_filters
        return self.filters[self.shared_blocks : self.shared_blocks + self.age_blocks]

    def branch_l2(self, branch: str) -> float:
        """L2 of a part of the network: "shared", "age" or "gender"."""
        return self.gender_l2 if branch == "gender" else self.l2

    def age_target_scale(self, train_mean_age: float) -> float:
        """Years per unit of the regression output: the train mean age, or 1 for years."""
        return 1.0 if self.age_output == "years" else train_mean_age

    def to_dict(self) -> dict:
        d = asdict(self)
        d["filters"] = list(self.filters)
        d["gender_filters"] = list(self.gender_filters)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """The config of `to_dict`; dicts of studies made before a field existed get its default."""
        return cls(**{**d, "filters": tuple(d["filters"]), "gender_filters": tuple(d.get("gender_filters", ()))})


OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
AGE_LOSSES = ("mse", "mae", "huber")
LR_SCHEDULES = ("constant", "plateau", "cosine")
PRECISIONS = ("float32", "mixed_bfloat16")
AGE_WEIGHTINGS = ("none", "sqrt_inverse", "inverse")


@dataclass(frozen=True)
class TrainConfig:
    """How one model is trained."""

    optimizer: str = "adam"  # adam | adamw | rmsprop | sgd (with Nesterov momentum 0.9)
    learning_rate: float = 1e-3  # initial learning rate
    batch_size: int = 64  # images per step
    age_loss_weight: float = 1.0  # weight of the age loss; the gender loss has weight 1
    age_loss: str = "mae"  # loss on the normalised age: mse | mae | huber
    flip: bool = True  # random horizontal flips while training
    rotation: float = 0.0  # random rotation, fraction of a full turn (0.05 = +-18 degrees)
    zoom: float = 0.0  # random zoom, fraction of the side
    brightness: float = 0.0  # random brightness shift, fraction of the 0..255 range
    translation: float = 0.0  # random shift, fraction of the side
    contrast: float = 0.0  # random contrast change, fraction
    epochs: int = 10  # most epochs; early stopping may end sooner
    patience: int | None = None  # epochs without improvement before stopping; None = max(5, epochs // 3)
    lr_schedule: str = "constant"  # constant | plateau (halve on a 3-epoch plateau) | cosine (decay to 0 over the epochs)
    age_weighting: str = "none"  # age loss weight per image by its decade's train frequency: none | sqrt_inverse | inverse
    precision: str = "float32"  # float32 | mixed_bfloat16 (bf16 compute, float32 weights and outputs)
    steps_per_execution: int = 1  # batches per compiled call: fewer host round trips, a longer compile
    freeze_epochs: int = 0  # with a backbone: epochs with it frozen before fine-tuning it
    finetune_lr_factor: float = 0.1  # learning rate multiplier once the backbone is unfrozen
    seed: int | None = None  # Keras' global seed (weights, shuffling, augmentation, dropout); None = unseeded
    ema_momentum: float = 0.0  # > 0: validate, keep and export the weights' moving average (Keras' optimizer `use_ema`); 0 = off

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise _invalid("optimizer", f"must be one of {OPTIMIZERS}", self.optimizer)
        if self.age_loss not in AGE_LOSSES:
            raise _invalid("age_loss", f"must be one of {AGE_LOSSES}", self.age_loss)
        if not self.learning_rate > 0:
            raise _invalid("learning_rate", "must be > 0", self.learning_rate)
        if self.batch_size < 1:
            raise _invalid("batch_size", "must be >= 1", self.batch_size)
        if not self.age_loss_weight > 0:
            raise _invalid("age_loss_weight", "must be > 0", self.age_loss_weight)
        for name in ("rotation", "zoom", "brightness", "translation", "contrast"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise _invalid(name, "must be in [0, 1)", getattr(self, name))
        if self.epochs < 1:
            raise _invalid("epochs", "must be >= 1", self.epochs)
        if self.patience is not None and self.patience < 1:
            raise _invalid("patience", "must be >= 1 or None", self.patience)
        for name, allowed in (("lr_schedule", LR_SCHEDULES), ("precision", PRECISIONS), ("age_weighting", AGE_WEIGHTINGS)):
            if getattr(self, name) not in allowed:
                raise _invalid(name, f"must be one of {allowed}", getattr(self, name))
        if self.steps_per_execution < 1:
            raise _invalid("steps_per_execution", "must be >= 1", self.steps_per_execution)
        if self.freeze_epochs < 0:
            raise _invalid("freeze_epochs", "must be >= 0", self.freeze_epochs)
        if not 0 < self.finetune_lr_factor <= 1:
            raise _invalid("finetune_lr_factor", "must be in (0, 1]", self.finetune_lr_factor)
        if not 0.0 <= self.ema_momentum < 1.0:
            raise _invalid("ema_momentum", "must be in [0, 1) (0 = off)", self.ema_momentum)
        if self.ema_momentum > 0 and self.freeze_epochs > 0:
            # The fine-tuning fit compiles a new optimizer, whose average would be swapped in
            # before it holds anything (Keras' SwapEMAWeights keeps its state across fits).
            raise _invalid("ema_momentum", "cannot be used with freeze_epochs > 0", self.ema_momentum)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32):
            raise _invalid("seed", "must be an integer in [0, 2**32) or None", self.seed)

    @property
    def early_stopping_patience(self) -> int:
        """`patience`, or a third of the epochs (at least 5): slow starters get to finish."""
        return self.patience if self.patience is not None else max(5, self.epochs // 3)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """The config of `to_dict`; dicts of studies made before a field existed get its default."""
        return cls(**d)
