"""GEAR: Guided End-to-End AutoRegression. Reference pipeline package."""
__version__ = "0.1.0"
