"""The built-in training recipes (``*.yaml``), installed as the package ``mgpo_recipes``.

``mgpo train --recipe NAME`` finds ``NAME.yaml`` here; see ``stages.config.builtin_recipes``.
"""
