"""Built-in sb-meta plugins (installed as ``sb_meta_plugins``).

They register through the ``sb_meta.plugins`` entry-point group exactly like
third-party plugins, so ``sb-meta plugins`` lists them with their origin.
"""
