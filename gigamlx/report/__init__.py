"""`gigamlx report RUN`: a run's curves, configuration and validation overlays on one
self-contained HTML page. run_data reads the run folder; svg draws line charts; charts picks
what goes in them; facts sums the run up; page (with style) writes the document."""
