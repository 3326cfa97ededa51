"""Config pipeline: YAML with line numbers → schema → secrets → semantic checks → spec."""
