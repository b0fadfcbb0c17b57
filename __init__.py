"""dupwatch: streaming duplicate-image detection for moderation pipelines."""
__version__ = "0.1.0"
