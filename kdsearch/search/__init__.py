"""The search: the student space, sweeps, hand-picked baselines, early stopping and the
Optuna objective. Builds on training/; knows nothing of storage or reports."""
