"""Few-shot training of a fusion and head on drawn labels: samples, the loop, metrics, the job."""
