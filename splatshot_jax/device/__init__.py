"""Device plumbing: the views mesh the step is split over (`sharding`) and the persistent XLA cache (`compile_cache`)."""
