"""Training: data in memory, model builders, the distillation loss, the training engine and
the teacher cache. Knows nothing of Optuna studies or reports."""
