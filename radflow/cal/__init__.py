"""Calibration steps, one module per step.

Each module registers its step(s) with :func:`radflow.step.register_step`;
:func:`radflow.step.get_step` imports every module here, so a new step module needs no edit of
this file.
"""
