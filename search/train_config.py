"""How one model is trained: a frozen, validated TrainConfig (no Keras import here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
AGE_LOSSES = ("mse", "mae", "huber")


def _invalid(name: str, rule: str, value: object) -> ValueError:
    return ValueError(f"Invalid value for `{name}`: {rule}. Received: {name}={value!r}")


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
    patience: int = 3  # epochs without improvement of the val objective before stopping
    freeze_epochs: int = 0  # with a backbone: epochs with it frozen before fine-tuning it
    finetune_lr_factor: float = 0.1  # learning rate multiplier once the backbone is unfrozen

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
        if self.patience < 1:
            raise _invalid("patience", "must be >= 1", self.patience)
        if self.freeze_epochs < 0:
            raise _invalid("freeze_epochs", "must be >= 0", self.freeze_epochs)
        if not 0 < self.finetune_lr_factor <= 1:
            raise _invalid("finetune_lr_factor", "must be in (0, 1]", self.finetune_lr_factor)

    def to_dict(self) -> dict:
        return asdict(self)
