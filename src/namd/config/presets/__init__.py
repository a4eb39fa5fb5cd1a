"""Named YAML presets: tiny (CPU, minutes), bench (CPU, hours), paper (GPU, the paper's sizes)."""
