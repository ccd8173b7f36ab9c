"""Demo data and demo jobs (generated land-cover scene, the MNI152 volume demo); not the library core."""
