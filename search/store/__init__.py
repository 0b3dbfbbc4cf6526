"""What a search keeps: the Optuna study in its storage, and ranking its trials (study), and each
trial's model in Optuna's artifact store (artifacts)."""
