"""The learning core: data, models, losses, training and evaluation (no Qt, no medhash_app)."""
