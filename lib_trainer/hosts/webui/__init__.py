"""The WebUI host (AUTOMATIC1111 1.10 and Forge), in ``host``; the only package of Train Tools that imports the
WebUI's ``modules``."""
