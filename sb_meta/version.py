"""The version of sb-meta, in the lowest layer so that any module may name it.

``sb_meta.__version__`` (what ``setup.cfg`` reads) is this one.

Example
-------
>>> import sb_meta
>>> sb_meta.__version__ == __version__
True
"""

__version__ = "0.1.0"
