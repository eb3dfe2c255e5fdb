"""Run outputs: results AnnData, model bundle, metrics and config files."""
