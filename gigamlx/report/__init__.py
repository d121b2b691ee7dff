"""`gigamlx report RUN`: a run's curves, configuration and validation overlays on one
self-contained HTML page (svg: the charts; run_data: reading the run; page: the document)."""
