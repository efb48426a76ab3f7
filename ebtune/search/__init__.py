"""Schedule search: Optuna trials, scoring, and MLflow tracking of every trial and the Pareto front."""
