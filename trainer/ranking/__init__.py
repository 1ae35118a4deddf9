"""DCN-v2 multitask ranking: model, training run_fn, export."""
