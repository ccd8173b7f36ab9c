"""gigaseg's library: ingest, scene store, tile grid and blocks, blending, the block
inference engine, exporters, progress. Importable and testable without Ray or
Prefect running; the flows and the command line are thin layers over it.
"""
