"""Where blocks run: the Ray actor pool, progress reporting, process-wide memory and OpenMP settings."""
