"""Custom TFX components: thin declarations over plain, separately tested functions."""
