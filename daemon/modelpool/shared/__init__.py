"""State shared by many sidecars through Redis: limits, budgets, upstream cooldowns."""
