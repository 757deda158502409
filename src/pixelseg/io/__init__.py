"""The ground floor: atomic writes, safetensors, the saved-model format, image and volume files."""
