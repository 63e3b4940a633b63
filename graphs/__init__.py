"""Pipeline recipes: YAML files naming steps, their order and their parameters (data, not code)."""
