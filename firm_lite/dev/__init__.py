"""Developer tools that build firm-lite's test fixtures; nothing at run time imports them.

- :mod:`~firm_lite.dev.tiny_critic` (+ :mod:`~firm_lite.dev.tiny_architecture`,
  :mod:`~firm_lite.dev.compare_heads`): builds and trains the offline tiny critic whose result
  ships as package data in ``firm_lite/assets/tiny-critic`` (found by
  :func:`firm_lite.sources.tiny_critic_dir` without importing any of this);
- :mod:`~firm_lite.dev.editset`: generates the edit set the tiny critic is trained and calibrated on.

Only the tests and these modules import ``firm_lite.dev`` (``tests/test_import_layers.py``).
"""
