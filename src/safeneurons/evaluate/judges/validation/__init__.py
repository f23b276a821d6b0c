"""Shipped validation records of the built-in judges (``<judge>.json``, see :mod:`safeneurons.evaluate.validation`)."""
