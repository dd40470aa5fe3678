"""preprocessing stage of the pipeline."""
