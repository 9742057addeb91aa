"""Pipeline stages: prepare -> rollout -> score -> train -> eval."""
