"""driver.datasets: the run format, `driver ingest`, the store and its fast clip loader."""
