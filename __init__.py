"""agesearch: hyperparameter search for two-branch age/gender CNNs on UTKFace."""

__version__ = "0.1.0"
