"""Training one configuration (fit) and scoring predictions (metrics); knows nothing of Optuna."""
