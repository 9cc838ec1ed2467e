"""The service files that ``linewatch install`` puts in place: the hardened unit and the example configuration.

A package only so that they travel inside the wheel (``importlib.resources``); there is no code here.
"""
