"""Cameras: where frames come from, chosen by the config's ``type:``."""
