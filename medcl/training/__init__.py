"""Lightning modules for pretraining."""
