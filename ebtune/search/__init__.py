"""Schedule search: Optuna trials, scoring, and MLflow tracking of every trial and the Pareto front.

`run_search(SearchConfig.from_mapping(cfg))` runs one search (`ebtune.search.pipeline`).
"""
from ebtune.search.config import SearchConfig
from ebtune.search.pipeline import SearchResult, run_search

__all__ = ["SearchConfig", "SearchResult", "run_search"]
