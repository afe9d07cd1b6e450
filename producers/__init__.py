"""Ways reports enter the pipeline."""
