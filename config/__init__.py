"""config: YAML settings (default.yaml plus profiles) and the one typed loader."""
