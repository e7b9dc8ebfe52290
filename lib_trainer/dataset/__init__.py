"""Datasets: import and validation of pictures, the dataset report, preprocessing, captions and tags.

The modules are imported on demand (``from lib_trainer.dataset import importer``); this package itself imports
nothing, so that the WebUI's start-up pays nothing for it. Everything here runs inside the WebUI process: only
the standard library, Pillow, numpy and (optionally) OpenCV.
"""
