"""Analysis: normalise the model, find channel units (rules/ + union-find), layer groups, costs."""
