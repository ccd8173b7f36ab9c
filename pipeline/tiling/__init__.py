"""The one global tile grid, output blocks and their halo, blending windows: pure geometry, no I/O."""
