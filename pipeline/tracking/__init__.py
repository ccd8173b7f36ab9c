"""MLflow: where runs and the registry live, model versions, promotion, a segmentation run's record."""
