"""Two-tower retrieval: model, training run_fn, evaluation, exports and the ScaNN index."""
