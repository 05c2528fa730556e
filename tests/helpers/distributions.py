"""Third-party plugins installed for real in a test: a module and its ``.dist-info``
with an ``sb_meta.plugins`` entry point, on a folder put on ``sys.path``."""


def install_fake_distribution(root, dist, module, source, ep_name):
    """A real installed distribution: module + .dist-info with an entry point."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[sb_meta.plugins]\n{ep_name} = {module}\n")
