"""Hosts: the only way the core reaches the program that draws images (the WebUI, Forge, or our own diffusers host).

``base`` holds the protocol (standard library + Pillow). ``webui`` is the only module importing the WebUI's
``modules``; ``standalone`` needs the trainer's private dependencies. Import those two explicitly, never from here.
"""
