"""Work that spans lanes, built on the engine's facade (no HTTP here): the speaking pipeline."""
