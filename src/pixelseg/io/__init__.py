"""The ground floor: atomic writes, safetensors checkpoints, saved-model folders, typed YAML configs,
image and volume files, palettes and overlays. Imports nothing of pixelseg but ``errors``."""
